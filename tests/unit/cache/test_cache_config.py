"""The ``[cache]`` keys of issue 15: the RFC 9213 target list and the RFC 9111 §4.2.2
heuristic, read into ``CacheSettings`` and on into the rules' ``CachePolicy``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.cache.policy import CachePolicy
from gateway.cache.store import ResponseCache
from gateway.config import CacheSettings, ConfigError, parse_settings

PATH = Path("/srv/gw/config.toml")
BASE: dict[str, Any] = {
    "gateway": {"http_port": 18080, "https_port": 18443},
    "upstreams": {"app": {"servers": ["http://127.0.0.1:9001"]}},
    "routes": [{"path_prefix": "/", "upstream": "app"}],
}


def with_cache(**keys: Any) -> dict[str, Any]:
    return {**BASE, "cache": keys}


def test_defaults() -> None:
    settings = parse_settings(with_cache(), PATH).cache
    assert settings.targeted_fields == ("CDN-Cache-Control",)
    assert (settings.heuristic_fraction, settings.heuristic_max_seconds) == (0.1, 86400.0)


def test_keys_reach_the_policy_of_the_store() -> None:
    settings = parse_settings(
        with_cache(
            targeted_fields=["Gateway-Cache-Control", "CDN-Cache-Control"],
            heuristic_fraction=0.25,
            heuristic_max_seconds=600,
        ),
        PATH,
    ).cache
    store = ResponseCache.from_settings(settings)
    assert store.policy == CachePolicy(
        targeted_fields=(b"gateway-cache-control", b"cdn-cache-control"),
        heuristic_fraction=0.25,
        heuristic_max_seconds=600.0,
    )
    # An empty target list is allowed: Cache-Control alone then decides.
    assert parse_settings(with_cache(targeted_fields=[]), PATH).cache.targeted_fields == ()
    assert ResponseCache.from_settings(CacheSettings()).policy == CachePolicy()


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            {"targeted_fields": ["CDN Cache Control"]},
            ["[cache] targeted_fields", "CDN Cache Control", "an HTTP field name"],
        ),
        ({"targeted_fields": "CDN-Cache-Control"}, ["[cache] targeted_fields", "a list"]),
        ({"heuristic_fraction": 1.5}, ["[cache] heuristic_fraction", "1.5", "from 0 to 1"]),
        ({"heuristic_fraction": True}, ["[cache] heuristic_fraction", "from 0 to 1"]),
        ({"heuristic_max_seconds": -1}, ["[cache] heuristic_max_seconds", "-1", ">= 0"]),
        ({"store": "disk"}, ["[cache] store", "disk", '"memory", "shared" or "redis://']),
        ({"store": "redis://cache"}, ["[cache] store", "redis://cache", "host and a port"]),
        ({"store": "redis://cache:x/0"}, ["[cache] store", "cache:x", "port must be a number"]),
        ({"store": "redis://cache:6379/one"}, ["[cache] store", "database must be a number"]),
        ({"store": 1}, ["[cache] store", "1", '"memory", "shared"']),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(
    keys: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(with_cache(**keys), PATH)
    (line,) = info.value.errors
    position = 0
    for part in expected:
        position = line.index(part, position)
    assert line.startswith(str(PATH))


def test_store_defaults_to_shared_with_several_workers() -> None:
    one = parse_settings(with_cache(), PATH).cache
    assert (one.store, one.shared_dir) == ("memory", None)
    two = {**BASE, "gateway": {**BASE["gateway"], "workers": 2}}
    shared = parse_settings(two, PATH).cache
    assert shared.store == "shared" and shared.shared_dir == Path("/srv/gw/var/gateway-cache")
    chosen = parse_settings({**two, "cache": {"store": "memory"}}, PATH).cache
    assert chosen.store == "memory"
    redis = parse_settings(with_cache(store="redis://10.0.0.5:6379/2"), PATH).cache
    assert redis.store == "redis://10.0.0.5:6379/2"
