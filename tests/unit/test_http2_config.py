"""``[gateway] http2``: the key, and what the server makes of it (limits for the listener,
ALPN of the TLS contexts)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, parse_settings
from gateway.http2.limits import DEFAULT_HEADER_TIMEOUT
from gateway.server import Gateway
from gateway.tls.context import ALPN_PROTOCOLS, ALPN_PROTOCOLS_H2

PATH = Path("/srv/gw/config.toml")


def settings(**gateway: Any) -> Any:
    data = {
        "gateway": {"http_port": 18080, "https_port": 18443, **gateway},
        "upstreams": {"app": {"servers": ["http://127.0.0.1:9001"]}},
        "routes": [{"path_prefix": "/", "upstream": "app"}],
    }
    return parse_settings(data, PATH)


def test_http2_is_on_by_default_and_a_bool() -> None:
    assert settings().gateway.http2 is True
    assert settings(http2=False).gateway.http2 is False
    with pytest.raises(ConfigError) as info:
        settings(http2="yes")
    (line,) = info.value.errors
    assert "[gateway] http2" in line and "'yes'" in line and "true or false" in line


def test_the_https_listener_gets_http2_limits_from_the_settings() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    gateway = Gateway(settings(max_header_bytes=8192, keepalive_timeout=7.0, body_timeout=3.0))
    limits = gateway._http2_limits(context)
    assert limits is not None
    assert limits.max_header_bytes == 8192
    assert limits.idle_timeout == 7.0
    assert limits.header_timeout == getattr(
        gateway.settings.gateway, "header_timeout", DEFAULT_HEADER_TIMEOUT
    )
    assert limits.body_timeout == 3.0
    assert limits.max_concurrent_streams == 100
    # The plain-HTTP (redirect) listener never speaks h2, nor does anything with http2 off.
    assert gateway._http2_limits(None) is None
    assert Gateway(settings(http2=False))._http2_limits(context) is None


def test_alpn_lists() -> None:
    assert ALPN_PROTOCOLS_H2 == ["h2", "http/1.1"]
    assert ALPN_PROTOCOLS == ["http/1.1"]
