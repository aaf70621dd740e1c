"""[admin] and the access-log keys in the config: defaults, checks and their messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import AdminSettings, ConfigError, parse_settings

PATH = Path("/srv/gw/config.toml")
BASE: dict[str, Any] = {
    "upstreams": {"app": {"servers": ["http://127.0.0.1:9001"]}},
    "routes": [{"path_prefix": "/", "upstream": "app"}],
}


def errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings({**BASE, **data}, PATH)
    return info.value.errors


def test_no_admin_table_means_no_admin_listener() -> None:
    assert parse_settings(BASE, PATH).admin is None


def test_admin_defaults() -> None:
    assert parse_settings({**BASE, "admin": {}}, PATH).admin == AdminSettings(
        enabled=True, host="127.0.0.1", port=8444, htpasswd=None
    )


def test_an_open_admin_port_needs_htpasswd() -> None:
    (line,) = errors({"admin": {"host": "0.0.0.0"}})
    assert line.startswith(f"{PATH}: [admin] host = '0.0.0.0': is not a loopback address")
    assert "htpasswd" in line


def test_a_disabled_admin_needs_nothing() -> None:
    admin = parse_settings({**BASE, "admin": {"enabled": False, "host": "0.0.0.0"}}, PATH).admin
    assert admin is not None and not admin.enabled


def test_htpasswd_must_be_readable_and_valid(tmp_path: Path) -> None:
    missing = tmp_path / "none.htpasswd"
    (line,) = errors({"admin": {"htpasswd": str(missing)}})
    assert f"[admin] htpasswd = '{missing}'" in line and "no such file" in line
    bad = tmp_path / "bad.htpasswd"
    bad.write_text("ops:plaintext\n")
    (line,) = errors({"admin": {"htpasswd": str(bad)}})
    assert "[admin] htpasswd" in line


def test_admin_port_must_not_clash_with_the_proxy() -> None:
    (line,) = errors({"gateway": {"https_port": 9443}, "admin": {"port": 9443}})
    assert line == (
        f"{PATH}: [admin] port = 9443: clashes with [gateway] https_port; "
        "the admin listener needs its own port"
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"admin": {"port": 0}}, "[admin] port = 0: must be an integer from 1 to 65535"),
        ({"admin": {"bogus": 1}}, "[admin] bogus: unknown key (allowed keys: enabled, host"),
        ({"admin": []}, "[admin]: must be a table"),
        (
            {"gateway": {"access_log_format": "xml"}},
            "[gateway] access_log_format = 'xml': must be one of",
        ),
        ({"gateway": {"access_log_max_bytes": -1}}, "[gateway] access_log_max_bytes = -1"),
        ({"gateway": {"access_log": ""}}, "must be true, false or a file path string"),
    ],
)
def test_bad_values_are_named(data: dict[str, Any], expected: str) -> None:
    assert any(expected in line for line in errors(data)), errors(data)


def test_access_log_path_is_relative_to_the_config_file() -> None:
    g = parse_settings({**BASE, "gateway": {"access_log": "logs/access.log"}}, PATH).gateway
    assert g.access_log == Path("/srv/gw/logs/access.log")
    assert (g.access_log_format, g.access_log_max_bytes, g.access_log_keep_days) == (
        "text",
        20 * 1024 * 1024,
        7.0,
    )
