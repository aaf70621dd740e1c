"""Config rules of issue 8: route handlers (upstream/static/redirect), host rules, https://
upstreams and their TLS keys, the WebSocket and start-up keys.  Each error names the file,
the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, Settings, UpstreamServer, parse_settings

PATH = Path("/srv/gw/config.toml")


def settings(routes: list[dict[str, Any]], **tables: Any) -> Settings:
    data: dict[str, Any] = {
        "gateway": {"hostnames": ["localhost", "app.localhost", "*.apps.localhost"]},
        "upstreams": {"app": {"servers": ["http://127.0.0.1:9001"]}},
        "routes": routes,
        **tables,
    }
    return parse_settings(data, PATH)


def error_of(routes: list[dict[str, Any]], **tables: Any) -> str:
    with pytest.raises(ConfigError) as info:
        settings(routes, **tables)
    assert len(info.value.errors) == 1, info.value.errors
    line = info.value.errors[0]
    assert line.startswith(f"{PATH}: ")
    return line


def test_a_route_has_exactly_one_handler(tmp_path: Path) -> None:
    assert "give exactly one of upstream, static or redirect" in error_of([{"path_prefix": "/"}])
    line = error_of([{"path_prefix": "/", "upstream": "app", "redirect": "https://x.test"}])
    assert "[[routes]] #1" in line and "(got upstream, redirect)" in line
    routes = settings(
        [
            {"path_prefix": "/", "upstream": "app"},
            {"path_prefix": "/s", "static": str(tmp_path)},
            {"path_prefix": "/r", "redirect": "https://example.org/"},
        ]
    ).routes
    assert [r.handler for r in routes] == ["proxy", "static", "redirect"]
    assert routes[1].static == tmp_path and routes[1].static_cache_control == "no-cache"
    assert routes[2].redirect == "https://example.org"  # the request path is appended


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ({"static": "/no/such/dir"}, ["static = '/no/such/dir'", "no such directory"]),
        ({"redirect": "example.org"}, ["redirect = 'example.org'", "absolute http:// or https://"]),
        ({"redirect": "https://x.test/?a=1"}, ["redirect", "without query or fragment"]),
        (
            {"upstream": "app", "static_cache_control": "max-age=60"},
            ["static_cache_control", "only applies to a route with static"],
        ),
        (
            {"upstream": "app", "hosts": ["other.test"]},
            ["hosts = ['other.test']", "'other.test' is not a served name", "[gateway] hostnames"],
        ),
        (
            {"upstream": "app", "hosts": ["a.b.apps.localhost"]},
            ["'a.b.apps.localhost' is not a served name"],  # a wildcard covers one label
        ),
        ({"upstream": "app", "hosts": ["bad host"]}, ["hosts", "must be a DNS name"]),
    ],
)
def test_route_key_errors(route: dict[str, Any], expected: list[str]) -> None:
    line = error_of([{"path_prefix": "/x", **route}])
    position = 0
    for part in expected:
        found = line.find(part, position)
        assert found >= 0, f"{part!r} not in {line!r}"
        position = found


def test_hosts_covered_by_the_served_names() -> None:
    routes = settings(
        [
            {"path_prefix": "/", "upstream": "app", "hosts": ["app.localhost"]},
            {"path_prefix": "/", "upstream": "app", "hosts": ["x.apps.localhost"]},
            {"path_prefix": "/", "upstream": "app", "hosts": ["*.apps.localhost"]},
            {"path_prefix": "/", "upstream": "app"},
        ]
    ).routes
    assert [r.hosts for r in routes][:3] == [
        ("app.localhost",),
        ("x.apps.localhost",),
        ("*.apps.localhost",),
    ]


def test_same_hosts_and_prefix_twice_is_an_error_but_other_hosts_are_not() -> None:
    line = error_of(
        [
            {"path_prefix": "/", "upstream": "app", "hosts": ["app.localhost"]},
            {"path_prefix": "/", "upstream": "app", "hosts": ["app.localhost"]},
        ]
    )
    assert "[[routes]] #2 path_prefix = '/'" in line and "is used by an earlier route" in line
    settings(
        [
            {"path_prefix": "/", "upstream": "app", "hosts": ["app.localhost"]},
            {"path_prefix": "/", "upstream": "app"},
        ]
    )


def test_https_upstreams_and_their_tls_keys(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    data = {
        "app": {"servers": ["http://127.0.0.1:9001"]},
        "secure": {
            "servers": ["https://api.example.test", "https://10.0.0.1:8443"],
            "tls_ca_file": str(ca),
            "tls_server_name": "api.example.test",
        },
    }
    parsed = settings([{"path_prefix": "/", "upstream": "secure"}], upstreams=data)
    secure = parsed.upstreams["secure"]
    assert secure.servers == (
        UpstreamServer("api.example.test", 443, "https"),
        UpstreamServer("10.0.0.1", 8443, "https"),
    )
    assert secure.servers[0].url == "https://api.example.test:443"
    assert secure.tls_ca_file == ca and not secure.tls_insecure_skip_verify

    plain = {"app": {"servers": ["http://127.0.0.1:9001"], "tls_insecure_skip_verify": True}}
    line = error_of([{"path_prefix": "/", "upstream": "app"}], upstreams=plain)
    assert "[upstreams.app] tls_insecure_skip_verify" in line
    assert "only applies to https:// servers" in line
    missing = {"app": {"servers": ["https://x.test"], "tls_ca_file": "/no/ca.pem"}}
    line = error_of([{"path_prefix": "/", "upstream": "app"}], upstreams=missing)
    assert "tls_ca_file = '/no/ca.pem'" in line and "no such file" in line


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("websocket_idle_timeout", 0, "a number > 0"),
        ("max_websocket_tunnels", 0, "an integer from 1"),
        ("ready_timeout", -1, "a number >= 0"),
    ],
)
def test_gateway_keys_of_issue_8(key: str, value: Any, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(
            {
                "gateway": {key: value},
                "upstreams": {"app": {"servers": ["http://127.0.0.1:9001"]}},
                "routes": [{"path_prefix": "/", "upstream": "app"}],
            },
            PATH,
        )
    (line,) = info.value.errors
    assert f"[gateway] {key} = {value}" in line and allowed in line
