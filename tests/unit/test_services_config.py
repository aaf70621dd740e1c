"""``[services.NAME]`` and ``[backend] database = "postgresql://..."`` in the config: defaults,
the upstream a service gets, port clashes, and messages that never show secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, ServiceSettings, UpstreamServer, parse_settings, redact_url

PRODUCTS: dict[str, Any] = {
    "command": ["python", "-m", "products", "--port", "{port}"],
    "base_port": 9001,
    "workers": 2,
    "health_path": "/products/health",
}


def config(tmp_path: Path, **tables: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "gateway": {"http_port": 18080, "https_port": 18443},
        "backend": {"base_port": 8001, "workers": 2},
        "upstreams": {"backend": {"servers": ["http://127.0.0.1:8001"]}},
        "routes": [{"path_prefix": "/", "upstream": "backend"}],
    }
    data.update(tables)
    return data


def errors(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(data, tmp_path / "config.toml")
    return info.value.errors


def test_a_service_gets_an_upstream_of_its_workers_and_routes_may_name_it(
    tmp_path: Path,
) -> None:
    data = config(
        tmp_path,
        services={"products": PRODUCTS},
        routes=[
            {"path_prefix": "/", "upstream": "backend"},
            {"path_prefix": "/products", "upstream": "products"},
        ],
    )
    settings = parse_settings(data, tmp_path / "config.toml")
    service = settings.services["products"]
    assert service == ServiceSettings(
        name="products",
        command=("python", "-m", "products", "--port", "{port}"),
        base_port=9001,
        workers=2,
        cwd=tmp_path,
        health_path="/products/health",
    )
    pool = settings.upstreams["products"]
    assert pool.servers == (UpstreamServer("127.0.0.1", 9001), UpstreamServer("127.0.0.1", 9002))
    assert pool.health_path == "/products/health"


def test_a_services_own_upstream_table_is_kept(tmp_path: Path) -> None:
    upstreams = {
        "backend": {"servers": ["http://127.0.0.1:8001"]},
        "products": {"servers": ["http://127.0.0.1:9001"], "health_interval": 3.0},
    }
    data = config(tmp_path, services={"products": PRODUCTS}, upstreams=upstreams)
    settings = parse_settings(data, tmp_path / "config.toml")
    assert settings.upstreams["products"].servers == (UpstreamServer("127.0.0.1", 9001),)
    assert settings.upstreams["products"].health_interval == 3.0


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        ({"a": {**PRODUCTS, "base_port": 8002}},
         "[services.a] base_port = 8002: port 8002 clashes with the [backend] workers"),
        ({"a": {**PRODUCTS, "base_port": 18442}},
         "[services.a] base_port = 18442: port 18443 clashes with [gateway] https_port"),
        ({"a": PRODUCTS, "b": {**PRODUCTS, "base_port": 9002}},
         "[services.b] base_port = 9002: port 9002 clashes with [services.a] (base_port"),
        ({"a": {**PRODUCTS, "base_port": 65535}},
         "[services.a] base_port = 65535: with workers = 2 the last port would exceed 65535"),
    ],
)  # fmt: skip
def test_port_clashes_are_config_errors(
    tmp_path: Path, services: dict[str, Any], expected: str
) -> None:
    found = errors(tmp_path, config(tmp_path, services=services))
    assert any(expected in line for line in found), found
    assert all(line.startswith(f"{tmp_path / 'config.toml'}: ") for line in found)


def test_service_keys_are_checked(tmp_path: Path) -> None:
    services = {
        "a": {"command": [], "base_port": 0, "workers": 99, "bogus": 1, "health_path": "x"},
        "b": {"base_port": 9100},
        "bad name!": {"command": ["x"], "base_port": 9200},
        "c": {"command": ["x"], "base_port": 9300, "cwd": "no/such/dir"},
    }
    found = "\n".join(errors(tmp_path, config(tmp_path, services=services)))
    assert "[services.a] command = []: must be a non-empty list" in found
    assert "[services.a] base_port = 0: must be an integer from 1 to 65535" in found
    assert "[services.a] workers = 99: must be an integer from 1 to 64" in found
    assert "[services.a] bogus: unknown key (allowed keys: command, workers, base_port" in found
    assert "[services.a] health_path = 'x': must be a URL path" in found
    assert "[services.b] command: is required" in found
    assert "[services.bad name!]: the service name must be letters" in found
    assert "[services.c] cwd = " in found and "no such directory" in found


def test_env_and_env_file_errors_never_show_values(tmp_path: Path) -> None:
    (tmp_path / "bad.env").write_text("GOOD=fine\nnot a line with hunter2\n")
    services = {
        "a": {**PRODUCTS, "env": {"TOKEN": 12345, "1BAD": "hunter2"}},
        "b": {**PRODUCTS, "base_port": 9100, "env_file": "bad.env"},
        "c": {**PRODUCTS, "base_port": 9200, "env_file": "missing.env"},
    }
    found = "\n".join(errors(tmp_path, config(tmp_path, services=services)))
    assert "12345" not in found and "hunter2" not in found
    assert '[services.a] env: must be a table of NAME = "string"' in found
    assert f"[services.b] env_file: {tmp_path / 'bad.env'}: line 2: expected KEY=value" in found
    assert f"[services.c] env_file: {tmp_path / 'missing.env'}: no such file" in found


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:pw@127.0.0.1:5432/backend",
        "postgres://db.internal/backend",
        "postgresql://app@[::1]:6543/backend?sslmode=require",
    ],
)
def test_a_postgresql_url_is_kept_as_it_is(tmp_path: Path, url: str) -> None:
    settings = parse_settings(config(tmp_path, backend={"database": url}), tmp_path / "c.toml")
    assert settings.backend.database == url
    assert settings.backend.state_dir == tmp_path / "var"  # the outbox's parent


def test_a_sqlite_path_is_resolved_and_bad_urls_are_reported_without_password(
    tmp_path: Path,
) -> None:
    settings = parse_settings(config(tmp_path, backend={"database": "db/app.db"}), tmp_path / "c")
    assert settings.backend.database == tmp_path / "db" / "app.db"
    assert settings.backend.state_dir == tmp_path / "db"
    for url in ("postgresql://app:topsecret@/backend", "postgresql://app:topsecret@h:99999/x",
                "postgresql://app:topsecret@host"):  # fmt: skip
        [line] = errors(tmp_path, config(tmp_path, backend={"database": url}))
        assert "topsecret" not in line and "app:***@" in line, line
        assert 'must be "postgresql://user:password@host:port/dbname"' in line


def test_redact_url() -> None:
    assert redact_url("postgresql://u:p@h:1/d") == "postgresql://u:***@h:1/d"
    assert redact_url("postgresql://u@h/d") == "postgresql://u@h/d"
