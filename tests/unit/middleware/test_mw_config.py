"""[middlewares.NAME] tables and route ``middlewares``: what loads, and the error lines
(file, key, value, what is allowed) for what does not; plus header rules applied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from gateway.config import ConfigError, parse_settings
from gateway.errors import parse_error, raw_error_response
from gateway.middleware.headers import HeaderRule


def settings_of(tmp_path: Path, middlewares: dict[str, Any], route_mws: list[str]) -> Any:
    data = {
        "upstreams": {"app": {"servers": ["http://127.0.0.1:9001"]}},
        "routes": [{"path_prefix": "/", "upstream": "app", "middlewares": route_mws}],
        "middlewares": middlewares,
    }
    return parse_settings(data, tmp_path / "config.toml")


def errors_of(tmp_path: Path, middlewares: dict[str, Any], route_mws: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        settings_of(tmp_path, middlewares, route_mws)
    return info.value.errors


def test_valid_tables_load(tmp_path: Path) -> None:
    users = tmp_path / "users.htpasswd"
    users.write_text("alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode() + "\n")
    settings = settings_of(
        tmp_path,
        {
            "gzip": {"type": "compress", "min_bytes": 512},
            "auth": {"type": "basic_auth", "htpasswd": "users.htpasswd", "realm": "Admin"},
            "limit": {"type": "rate_limit", "average": 5, "burst": 10},
            "hdrs": {
                "type": "headers",
                "request_set": {"X-Env": "test"},
                "response_remove": ["Server"],
            },
        },
        ["limit", "auth", "gzip", "hdrs"],
    )
    assert settings.routes[0].middlewares == ("limit", "auth", "gzip", "hdrs")
    assert settings.middlewares["gzip"].options == {"min_bytes": 512}
    assert settings.middlewares["auth"].options["htpasswd"] == users
    assert settings.middlewares["limit"].options == {"average": 5.0, "burst": 10}


def test_rate_limit_store_is_a_redis_url_or_absent(tmp_path: Path) -> None:
    url = "redis://10.0.0.5:6379/2"
    limits = {
        "shared": {"type": "rate_limit", "store": url},
        "local": {"type": "rate_limit"},
    }
    settings = settings_of(tmp_path, limits, ["shared", "local"])
    assert settings.middlewares["shared"].options == {"store": url}
    assert "store" not in settings.middlewares["local"].options


@pytest.mark.parametrize(
    ("middlewares", "route_mws", "expected"),
    [
        ({"x": {"type": "gzip"}}, [], ["[middlewares.x] type = 'gzip'", "must be one of:"]),
        ({"x": {}}, [], ["[middlewares.x] type", "must be one of: compress, basic_auth"]),
        (
            {"x": {"type": "compress", "level": 9}},
            [],
            ["[middlewares.x] level", "unknown key (allowed keys: min_bytes)"],
        ),
        ({"x": {"type": "compress", "min_bytes": -1}}, [], ["[middlewares.x] min_bytes = -1"]),
        ({}, ["nope"], ["middlewares = ['nope']", "no such middleware 'nope'"]),
        ({"x": {"type": "basic_auth"}}, [], ["[middlewares.x] htpasswd", "is required"]),
        (
            {"x": {"type": "basic_auth", "htpasswd": "missing.htpasswd"}},
            [],
            ["[middlewares.x] htpasswd = ", "missing.htpasswd'", "no such file"],
        ),
        (
            {"x": {"type": "rate_limit", "average": 0}},
            [],
            ["[middlewares.x] average = 0", "must be a number > 0"],
        ),
        (
            {"x": {"type": "rate_limit", "store": "memory"}},
            [],
            ["[middlewares.x] store = 'memory'", 'must be "redis://host:port/db"', "leave store"],
        ),
        (
            {"x": {"type": "rate_limit", "store": 6379}},
            [],
            ["[middlewares.x] store = 6379", 'must be "redis://host:port/db"'],
        ),
        (
            {"x": {"type": "rate_limit", "store": "redis://limits"}},
            [],
            ["[middlewares.x] store = 'redis://limits'", "with a host and a port"],
        ),
        (
            {"x": {"type": "rate_limit", "store": "redis://limits:port/0"}},
            [],
            ["[middlewares.x] store = 'redis://limits:port/0'", "port must be a number"],
        ),
        (
            {"x": {"type": "rate_limit", "store": "redis://limits:6379/one"}},
            [],
            ["[middlewares.x] store", "database must be a number, got 'one'"],
        ),
        (
            {"x": {"type": "headers", "response_set": {"Transfer-Encoding": "chunked"}}},
            [],
            ["[middlewares.x] response_set", "hop-by-hop or framing"],
        ),
        (
            {"x": {"type": "headers", "request_set": {"Content-Length": "1"}}},
            [],
            ["[middlewares.x] request_set", "hop-by-hop or framing"],
        ),
        (
            {"x": {"type": "headers", "request_remove": ["Connection"]}},
            [],
            ["[middlewares.x] request_remove", "hop-by-hop or framing"],
        ),
        (
            {"x": {"type": "headers", "request_set": {"X-Forwarded-For": "1.2.3.4"}}},
            [],
            ["[middlewares.x] request_set", "set by the gateway"],
        ),
        (
            {"x": {"type": "headers", "response_set": {"Bad Name": "v"}}},
            [],
            ["[middlewares.x] response_set", "HTTP field name"],
        ),
    ],
)
def test_errors_name_file_key_value(
    tmp_path: Path, middlewares: dict[str, Any], route_mws: list[str], expected: list[str]
) -> None:
    lines = [line for line in errors_of(tmp_path, middlewares, route_mws) if expected[0] in line]
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith(f"{tmp_path / 'config.toml'}: ")
    position = 0
    for part in expected:
        found = line.find(part, position)
        assert found >= 0, f"{part!r} not in {line!r}"
        position = found + len(part)


def test_bad_htpasswd_line_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "md5.htpasswd").write_text("alice:$apr1$xyz$abc\n")
    (line,) = errors_of(tmp_path, {"a": {"type": "basic_auth", "htpasswd": "md5.htpasswd"}}, ["a"])
    assert "[middlewares.a] htpasswd" in line and "line 1 (user 'alice'): unsupported hash" in line


def test_header_rule_replaces_and_removes() -> None:
    rule = HeaderRule.from_options({"X-Frame-Options": "DENY"}, ("Server",))
    headers = [(b"server", b"x"), (b"x-frame-options", b"ALLOW"), (b"content-type", b"t")]
    assert rule.apply(headers) == [(b"content-type", b"t"), (b"x-frame-options", b"DENY")]
    assert not HeaderRule.from_options(None, None)


def test_listener_error_responses_carry_a_request_id() -> None:
    """Answers written before any ASGI app runs (parser errors) have an X-Request-ID too,
    the same in the header and the JSON body."""
    head, _, body = raw_error_response(parse_error(False, 1024)).partition(b"\r\n\r\n")
    (line,) = [h for h in head.split(b"\r\n") if h.startswith(b"x-request-id: ")]
    request_id = line.split(b": ", 1)[1].decode()
    assert len(request_id) == 32 and json.loads(body)["request_id"] == request_id
