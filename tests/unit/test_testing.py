"""The pytest plugin's pure parts (``gateway.testing``): the config it writes and the health-check
answering wrapper, with no process and no socket."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from gateway.asgi import Message, Receive, Scope, Send
from gateway.config import parse_settings
from gateway.testing.app_server import answering_health_checks
from gateway.testing.tables import HEALTH_PATH, default_tables, merge_tables, toml_ready


def test_tables_merge_key_by_key_and_arrays_replace() -> None:
    base = {"gateway": {"https_port": 1, "hostnames": ["localhost"]}, "routes": [{"a": 1}]}
    override = {"gateway": {"hostnames": ["app.test"]}, "routes": [{"b": 2}], "cache": {}}
    assert merge_tables(base, override) == {
        "gateway": {"https_port": 1, "hostnames": ["app.test"]},
        "routes": [{"b": 2}],
        "cache": {},
    }
    assert base["gateway"] == {"https_port": 1, "hostnames": ["localhost"]}  # not mutated


def test_paths_and_tuples_become_toml_values() -> None:
    ready = toml_ready({"tls": {"dir": Path("/x/certs")}, "gateway": {"hostnames": ("a", "b")}})
    assert ready == {"tls": {"dir": "/x/certs"}, "gateway": {"hostnames": ["a", "b"]}}


def test_written_config_is_one_the_gateway_accepts(tmp_path: Path) -> None:
    tables = merge_tables(
        default_tables(tmp_path, 40001, 40002, "http://127.0.0.1:40003", HEALTH_PATH),
        toml_ready({"gateway": {"max_body_bytes": 10}, "upstreams": {"app": {"max_retries": 0}}}),
    )
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(tables))
    settings = parse_settings(tomllib.loads(path.read_text()), path)
    g = settings.gateway
    assert (g.https_port, g.http_port, g.hostnames, g.max_body_bytes) == (
        40001,
        40002,
        ("localhost",),
        10,
    )
    assert settings.tls.dir == tmp_path / "certs"
    app = settings.upstreams["app"]
    assert [(s.host, s.port) for s in app.servers] == [("127.0.0.1", 40003)]
    assert (app.health_path, app.max_retries) == (HEALTH_PATH, 0)
    assert app.health_status is not None and 500 in app.health_status
    assert [(r.path_prefix, r.upstream) for r in settings.routes] == [("/", "app")]
    assert settings.cache.enabled is False


def test_without_an_upstream_the_caller_names_the_pools(tmp_path: Path) -> None:
    tables = default_tables(tmp_path, 40001, 40002, None, "/")
    assert "upstreams" not in tables and "routes" not in tables


def call(app: Any, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_health_checks_are_answered_before_the_app() -> None:
    reached: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["type"] + " " + scope.get("path", ""))

    wrapped = answering_health_checks(app)
    sent = call(wrapped, {"type": "http", "path": HEALTH_PATH})
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 204
    assert reached == []
    call(wrapped, {"type": "http", "path": "/"})
    call(wrapped, {"type": "lifespan"})
    call(wrapped, {"type": "websocket", "path": HEALTH_PATH})
    assert reached == ["http /", "lifespan ", f"websocket {HEALTH_PATH}"]
