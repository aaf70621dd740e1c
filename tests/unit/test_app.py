"""``GatewayApp`` driven in-process (no sockets): validation, host routing, the redirect
handler, the outer send wrapper's headers and bookkeeping, and the error answers."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

from gateway.access_log import AccessLog
from gateway.app import GatewayApp
from gateway.config import parse_settings

CONFIG: dict[str, Any] = {
    "gateway": {
        "hostnames": ["localhost", "app.example.test"],
        "hsts_max_age": 600,
        "max_body_bytes": 100,
    },
    "upstreams": {"app": {"servers": ["http://127.0.0.1:9"]}},
    "routes": [
        {"path_prefix": "/api", "upstream": "app"},
        {"path_prefix": "/", "redirect": "https://example.org", "hosts": ["app.example.test"]},
    ],
    "cache": {"enabled": False},
}


def call(
    app: GatewayApp, path: str, host: str = "localhost", headers: list[Any] | None = None
) -> tuple[list[dict[str, Any]], str]:
    raw, _, query = path.encode().partition(b"?")
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": raw.decode(),
        "raw_path": raw,
        "query_string": query,
        "headers": [(b"host", host.encode()), *(headers or [])],
        "client": ("127.0.0.1", 5000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    stream = io.StringIO()
    app.access_log = AccessLog(enabled=True, stream=stream)

    async def run() -> None:
        await app(scope, receive, send)
        app.access_log.flush()

    asyncio.run(run())
    return sent, stream.getvalue()


def app() -> GatewayApp:
    return GatewayApp(parse_settings(CONFIG, Path("/srv/config.toml")), upstreams={})


def test_a_redirect_route_answers_with_the_gateways_own_headers() -> None:
    (start, body), log = call(app(), "/a/b?c=1", host="app.example.test")
    assert start["status"] == 308
    headers = dict(start["headers"])
    assert headers[b"location"] == b"https://example.org/a/b?c=1"
    # ClientSend adds Via and HSTS to every answer, once.
    assert headers[b"via"] == b"1.1 gateway" and headers[b"strict-transport-security"]
    assert [n for n, _ in start["headers"]].count(b"via") == 1
    assert f'"GET /a/b?c=1 HTTP/1.1" 308 {len(body["body"])}' in log


def test_no_route_and_foreign_host_and_large_body_are_json_errors() -> None:
    (start, body), log = call(app(), "/nothing")  # localhost has only /api
    assert start["status"] == 404 and b"no route matches localhost/nothing" in body["body"]
    assert " 404 " in log
    (start, _), _ = call(app(), "/api", host="evil.test")
    assert start["status"] == 421
    (start, body), _ = call(app(), "/api", headers=[(b"content-length", b"101")])
    assert start["status"] == 413 and (b"connection", b"close") in start["headers"]
    assert b"max_body_bytes" in body["body"]
