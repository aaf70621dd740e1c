"""Loading ``config.toml``: typed defaults, path resolution, and error messages that name the
file, the key, the bad value and what is allowed, all reported at once."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import (
    BACKEND_KEYS,
    CACHE_KEYS,
    GATEWAY_KEYS,
    ROUTE_KEYS,
    TLS_KEYS,
    UPSTREAM_KEYS,
    CacheSettings,
    ConfigError,
    GatewaySettings,
    Settings,
    UpstreamServer,
    load_settings,
    parse_settings,
)

REPO = Path(__file__).resolve().parents[2]
PATH = Path("/srv/gw/config.toml")
DELETE = object()

BASE: dict[str, Any] = {
    "gateway": {"http_port": 18080, "https_port": 18443},
    "upstreams": {"app": {"servers": ["http://127.0.0.1:9001"]}},
    "routes": [{"path_prefix": "/", "upstream": "app"}],
}


def config(**changes: Any) -> dict[str, Any]:
    """BASE with dotted keys set (``gateway.http_port=1``) or removed (``=DELETE``); a key
    ``routes`` replaces the whole list."""
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *tables, key = dotted.split("__")
        target = data
        for table in tables:
            target = target.setdefault(table, {})
        if value is DELETE:
            target.pop(key, None)
        else:
            target[key] = value
    return data


def errors_of(data: dict[str, Any], path: Path = PATH) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(data, path)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


# Each case: config changes -> the substrings its single error line must contain, in order:
# the key as written in the file, the bad value, and what is allowed instead.
BAD = {
    "port-out-of-range": (
        {"gateway__http_port": 70000},
        ["[gateway] http_port", "70000", "an integer from 0 to 65535"],
    ),
    "port-wrong-type": (
        {"gateway__http_port": "8080"},
        ["[gateway] http_port", "'8080'", "must be an integer"],
    ),
    "port-bool": ({"gateway__https_port": True}, ["[gateway] https_port", "true", "an integer"]),
    "bool-wrong-type": (
        {"gateway__access_log": 3},
        ["[gateway] access_log", "3", "must be true, false or a file path string"],
    ),
    "redirect-status": (
        {"gateway__redirect_status": 200},
        ["[gateway] redirect_status", "200", "one of 301, 302, 303, 307, 308"],
    ),
    "hostnames-empty": (
        {"gateway__hostnames": []},
        ["[gateway] hostnames", "[]", "non-empty list"],
    ),
    "hostname-invalid": (
        {"gateway__hostnames": ["localhost", "bad name"]},
        ["[gateway] hostnames", "item 1 ('bad name')", "DNS name or IP address"],
    ),
    "trusted-proxy": (
        {"gateway__trusted_proxies": ["10.0.0.0/33"]},
        ["[gateway] trusted_proxies", "'10.0.0.0/33'", "IP address or CIDR"],
    ),
    "timeout-zero": (
        {"gateway__keepalive_timeout": 0},
        ["[gateway] keepalive_timeout", "= 0", "a number > 0"],
    ),
    "timeout-nan": (
        {"gateway__keepalive_timeout": math.nan},
        ["[gateway] keepalive_timeout", "nan", "a number > 0"],
    ),
    "timeout-negative": (
        {"gateway__graceful_timeout": -1.5},
        ["[gateway] graceful_timeout", "-1.5", "a number >= 0"],
    ),
    "size-negative": (
        {"gateway__max_body_bytes": -1},
        ["[gateway] max_body_bytes", "-1", "an integer >= 0"],
    ),
    "unknown-key": (
        {"gateway__colour": "blue"},
        ["[gateway] colour", "unknown key", "allowed keys: host, http_port"],
    ),
    "unknown-table": (
        {"proxy": {}},
        ["[proxy]", "unknown table", "allowed: admin, backend, cache, gateway, middlewares"],
    ),
    "table-not-a-table": ({"gateway": 5}, ["[gateway]", "must be a table, got 5"]),
    "tls-empty-path": ({"tls__dir": ""}, ["[tls] dir", "''", "non-empty path string"]),
    "tls-half-pair": (
        {"tls__cert_file": "cert.pem"},
        ["[tls] cert_file/key_file", "give both cert_file and key_file, or neither"],
    ),
    "workers-zero": ({"backend__workers": 0}, ["[backend] workers", "0", "from 1 to 64"]),
    "backend-ports-overflow": (
        {"backend__base_port": 65535, "backend__workers": 2},
        ["[backend] base_port", "65535", "with workers = 2 the last port would exceed 65535"],
    ),
    "server-url-scheme": (
        {"upstreams__app__servers": ["ftp://127.0.0.1:9001"]},
        ["[upstreams.app] servers", "'ftp://127.0.0.1:9001'", "an http:// or https:// URL"],
    ),
    "server-url-path": (
        {"upstreams__app__servers": ["http://127.0.0.1:9001/api"]},
        ["[upstreams.app] servers", "'http://127.0.0.1:9001/api'", "an http:// or https:// URL"],
    ),
    "server-url-port": (
        {"upstreams__app__servers": ["http://127.0.0.1:99999"]},
        ["[upstreams.app] servers", "'http://127.0.0.1:99999'", "an http:// or https:// URL"],
    ),
    "servers-missing": (
        {"upstreams__app__servers": DELETE, "upstreams__app__health_path": "/h"},
        ["[upstreams.app] servers", "is required"],
    ),
    "health-status": (
        {"upstreams__app__health_status": [200, 99]},
        ["[upstreams.app] health_status", "item 1 (99)", "an integer from 100 to 599"],
    ),
    "header-timeout-negative": (
        {"gateway__header_timeout": -1},
        ["[gateway] header_timeout", "-1", "a number"],
    ),
    "max-connections-zero": (
        {"gateway__max_connections": 0},
        ["[gateway] max_connections", "0", "an integer from 1"],
    ),
    "request-buffering-on-a-static-route": (
        {
            "routes": [
                {"path_prefix": "/", "redirect": "https://a.test", "request_buffering": False}
            ]
        },
        ["[[routes]] #1 request_buffering", "only applies to a route with upstream"],
    ),
    "forwarding-loop": (
        {"upstreams__app__servers": ["http://127.0.0.1:18443"]},
        ["[upstreams.app] servers", "127.0.0.1:18443", "the gateway's own listener"],
    ),
    "upstream-name": (
        {"upstreams__bad name": {"servers": ["http://127.0.0.1:1"]}},
        ["[upstreams.bad name]", "letters, digits, '_' or '-'"],
    ),
    "route-prefix-relative": (
        {"routes": [{"path_prefix": "api", "upstream": "app"}]},
        ["[[routes]] #1 path_prefix", "'api'", 'a URL path starting with "/"'],
    ),
    "route-prefix-query": (
        {"routes": [{"path_prefix": "/api?x", "upstream": "app"}]},
        ["[[routes]] #1 path_prefix", "'/api?x'", "a plain path"],
    ),
    "route-upstream-required": (
        {"routes": [{"path_prefix": "/"}]},
        ["[[routes]] #1", "give exactly one of upstream, static or redirect"],
    ),
    "route-upstream-missing": (
        {"routes": [{"path_prefix": "/", "upstream": "nowhere"}]},
        ["[[routes]] #1 upstream", "'nowhere'", "no such upstream (defined: app)"],
    ),
    "route-duplicate-prefix": (
        {
            "routes": [
                {"path_prefix": "/", "upstream": "app"},
                {"path_prefix": "/", "upstream": "app"},
            ]
        },
        ["[[routes]] #2 path_prefix", "'/'", "is used by an earlier route"],
    ),
    "routes-not-an-array": ({"routes": {"path_prefix": "/"}}, ["[[routes]]", "array of tables"]),
    "listener-port-clash": (
        {"gateway__http_port": 18443},
        ["[gateway] https_port", "18443", "clashes with http_port"],
    ),
    "backend-port-clash": (
        {"gateway__http_port": 8002},
        ["[gateway] http_port", "8002", "clashes with the backend workers' ports 8001-8002"],
    ),
    "cache-entry-over-total": (
        {"cache__max_bytes": 100, "cache__max_entry_bytes": 200},
        ["[cache] max_entry_bytes", "200", "must not exceed max_bytes (100)"],
    ),
}


@pytest.mark.parametrize(("changes", "expected"), list(BAD.values()), ids=list(BAD))
def test_error_names_file_key_value_and_what_is_allowed(
    changes: dict[str, Any], expected: list[str]
) -> None:
    """Each bad setting gives exactly one error line about it, naming the file, the key, the
    value and what is allowed (in that order)."""
    lines = [line for line in errors_of(config(**changes)) if expected[0] in line]
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith(f"{PATH}: ")
    position = 0
    for part in expected:
        found = line.find(part, position)
        assert found >= 0, f"{part!r} not in {line!r} (after position {position})"
        position = found + len(part)


def test_invalid_upstream_table_is_not_reported_as_missing() -> None:
    """A mistake inside [upstreams.app] is reported once, where it is: the route that names
    app is not told to add a table that is already there."""
    lines = errors_of(config(upstreams__app__servers=["ftp://127.0.0.1:9001"]))
    assert len(lines) == 1, lines
    assert "[upstreams.app] servers" in lines[0]


def test_every_error_is_reported_at_once() -> None:
    """Loading goes on past the first problem: one line for each of several errors."""
    data = config(
        gateway__http_port=70000,
        gateway__colour="blue",
        backend__workers=0,
        upstreams__app__read_timeout=-1,
        routes=[{"path_prefix": "/", "upstream": "nowhere"}],
        cache__enabled="yes",
    )
    lines = errors_of(data)
    assert len(lines) == 6
    for key in (
        "[gateway] http_port",
        "[gateway] colour",
        "[backend] workers",
        "[upstreams.app] read_timeout",
        "[[routes]] #1 upstream",
        "[cache] enabled",
    ):
        assert sum(key in line for line in lines) == 1, key


def test_load_reports_missing_file_and_invalid_toml(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="no such file") as info:
        load_settings(missing)
    assert info.value.errors == [f"{missing}: no such file"]

    broken = tmp_path / "broken.toml"
    broken.write_text("[gateway\nhttp_port = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_settings(broken)
    assert info.value.errors[0].startswith(str(broken))


def test_relative_paths_are_resolved_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config works the same from any working directory."""
    directory = tmp_path / "site"
    directory.mkdir()
    (directory / "gw.toml").write_text(
        '[tls]\ndir = "pki"\ncert_file = "../shared/cert.pem"\nkey_file = "/abs/key.pem"\n'
        '[backend]\ndatabase = "data/app.db"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings("../site/gw.toml")
    assert settings.path == directory / "gw.toml"
    assert settings.tls.dir == directory / "pki"
    assert settings.tls.cert_file == tmp_path / "shared" / "cert.pem"
    assert settings.tls.key_file == Path("/abs/key.pem")
    assert settings.backend.database == directory / "data" / "app.db"
    assert settings.backend.outbox == directory / "var" / "outbox"  # default, also resolved


def test_defaults() -> None:
    """An empty file is a valid config: the documented defaults, paths next to the file."""
    settings = parse_settings({}, PATH)
    assert settings.gateway == GatewaySettings()
    g = settings.gateway
    assert (g.host, g.http_port, g.https_port, g.hostnames) == (
        "127.0.0.1",
        8080,
        8443,
        ("localhost",),
    )
    assert (g.redirect_status, g.max_body_bytes, g.access_log) == (308, 10485760, True)
    assert settings.tls.dir == Path("/srv/gw/certs")
    assert settings.tls.cert_file is None and settings.tls.key_file is None
    assert settings.backend.database == Path("/srv/gw/var/backend.db")
    assert settings.cache == CacheSettings()
    assert settings.upstreams == {} and settings.routes == ()


def test_upstream_defaults_and_retries() -> None:
    """A pool retries on each other server by default; max_retries overrides that."""
    settings = parse_settings(
        config(upstreams__app__servers=["http://a.internal:1", "http://[::1]:2", "http://b"]),
        PATH,
    )
    app = settings.upstreams["app"]
    assert app.servers == (
        UpstreamServer("a.internal", 1),
        UpstreamServer("::1", 2),
        UpstreamServer("b", 80),
    )
    assert [s.address for s in app.servers] == ["a.internal:1", "[::1]:2", "b:80"]
    assert (app.health_path, app.health_interval, app.read_timeout) == ("/health", 2.0, 30.0)
    assert app.retries == 2
    limited = parse_settings(config(upstreams__app__max_retries=0), PATH)
    assert limited.upstreams["app"].retries == 0


def test_values_are_converted() -> None:
    """Integers given for seconds become floats, hostnames are normalized."""
    settings = parse_settings(
        config(
            gateway__hostnames=["Example.TEST.", "::1"],
            gateway__trusted_proxies=["10.1.2.3/8"],
            upstreams__app__read_timeout=5,
        ),
        PATH,
    )
    assert settings.gateway.hostnames == ("example.test", "::1")
    assert settings.gateway.trusted_proxies == ("10.0.0.0/8",)
    assert settings.upstreams["app"].read_timeout == 5.0
    assert isinstance(settings.upstreams["app"].read_timeout, float)


def test_shipped_config_loads() -> None:
    """The repository's config.toml is valid and says what the README says."""
    settings = load_settings(REPO / "config.toml")
    assert settings.gateway.hostnames == ("localhost",)
    assert (settings.gateway.http_port, settings.gateway.https_port) == (8080, 8443)
    backend = settings.upstreams["backend"]
    assert [s.port for s in backend.servers] == list(settings.backend.worker_ports())
    assert [(r.path_prefix, r.upstream) for r in settings.routes] == [
        ("/", "backend"),
        ("/products", "products"),
    ]
    products = settings.services["products"]
    assert [s.port for s in settings.upstreams["products"].servers] == list(products.worker_ports())
    assert settings.tls.dir == REPO / "certs"
    assert settings.admin is not None and settings.admin.port == 8444
    assert "ok" in settings.summary()


@pytest.mark.parametrize(
    ("hostnames", "max_age", "expected"),
    [
        (("localhost",), None, None),
        (("localhost", "127.0.0.1", "::1"), None, None),
        (("localhost", "app.example.test"), None, "max-age=31536000"),
        (("app.example.test",), 0, None),
        (("localhost",), 600, "max-age=600"),
        # RFC 6761: every *.localhost name is loopback too (adding app.localhost must not
        # turn on a one-year HSTS for localhost).
        (("localhost", "app.localhost", "*.apps.localhost"), None, None),
        (("app.localhost", "app.localhost.example.test"), None, "max-age=31536000"),
    ],
)
def test_hsts_header(hostnames: tuple[str, ...], max_age: int | None, expected: str | None) -> None:
    """Auto mode sends HSTS only when a non-loopback name is served (browsers pin it per
    host, whatever the port); an explicit max-age wins; 0 turns it off."""
    settings = GatewaySettings(hostnames=hostnames, hsts_max_age=max_age)
    assert settings.hsts_header == expected


def test_summary_is_one_line() -> None:
    summary = parse_settings(config(), PATH).summary()
    assert "\n" not in summary
    assert str(PATH) in summary and "18443" in summary and "1 route(s)" in summary


SCHEMAS = {
    "gateway": GATEWAY_KEYS,
    "tls": TLS_KEYS,
    "backend": BACKEND_KEYS,
    "cache": CACHE_KEYS,
    "upstream": UPSTREAM_KEYS,
    "route": ROUTE_KEYS,
}
toml_scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.text(max_size=30)
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.mark.parametrize("key", ["tls__dir", "gateway__access_log"])
def test_a_path_with_a_nul_character_is_a_config_error(key: str) -> None:
    """Found by the property below: ``Path.resolve`` raises ValueError on it."""
    table, name = key.split("__")
    (line,) = errors_of(config(**{key: "logs/a\0b"}))
    assert f"[{table}] {name}" in line and "NUL character" in line


@pytest.mark.parametrize("value", [167772160, True])
def test_trusted_proxies_must_be_strings(value: object) -> None:
    """``trusted_proxies = [167772160]`` is a wrong type, not the network 10.0.0.0/32."""
    (line,) = errors_of(config(gateway__trusted_proxies=[value]))
    assert "[gateway] trusted_proxies" in line and "CIDR" in line


FUZZED_KEYS = [(table, key) for table, keys in SCHEMAS.items() for key in keys]


@given(
    key=st.sampled_from(FUZZED_KEYS),
    value=toml_values,
)
def test_any_value_gives_settings_or_config_error(key: tuple[str, str], value: Any) -> None:
    """Whatever TOML value a key has, loading returns Settings or raises ConfigError whose
    lines all name the file: never another exception."""
    table, name = key
    if table == "upstream":
        data = config(**{f"upstreams__app__{name}": value})
    elif table == "route":
        data = config(routes=[{"path_prefix": "/", "upstream": "app", name: value}])
    else:
        data = config(**{f"{table}__{name}": value})
    try:
        settings = parse_settings(data, PATH)
    except ConfigError as exc:
        assert exc.errors and all(line.startswith(f"{PATH}: ") for line in exc.errors)
    else:
        assert isinstance(settings, Settings)


@pytest.mark.parametrize(
    "pool",
    [
        {"health_interval": 0.5},  # the default health_timeout (1.0) is larger: accepted
        {"health_interval": 1.0, "health_timeout": 5.0},
    ],
)
def test_health_timeout_may_exceed_the_interval(pool: dict[str, float]) -> None:
    """Issue 13: a round of checks finishes before the next starts, so checks never overlap;
    a key the user did not write (the default health_timeout) never causes an error."""
    changes = {f"upstreams__app__{key}": value for key, value in pool.items()}
    app = parse_settings(config(**changes), PATH).upstreams["app"]
    assert app.health_interval == pool["health_interval"]


def test_abuse_limits_defaults_and_values() -> None:
    g = parse_settings({}, PATH).gateway
    assert (g.header_timeout, g.body_timeout, g.max_connections) == (10.0, 30.0, 4096)
    assert (g.keepalive_requests, g.body_buffer_bytes) == (1000, 256 * 1024)
    settings = parse_settings(
        config(
            gateway__header_timeout=2,
            gateway__body_timeout=3,
            gateway__max_connections=10,
            gateway__keepalive_requests=5,
            routes=[{"path_prefix": "/", "upstream": "app", "request_buffering": False}],
        ),
        PATH,
    )
    g = settings.gateway
    assert (g.header_timeout, g.body_timeout, g.max_connections, g.keepalive_requests) == (
        2.0,
        3.0,
        10,
        5,
    )
    assert settings.routes[0].request_buffering is False
