"""A connection whose TLS handshake ends after its listener began to drain (graceful
shutdown, or a reload that moved the port): uvicorn never asked it to finish, so the
listener answers what it came with and closes it (``gateway.listener.ListenerState``).
HTTP/2's side is in test_http2_protocol.py."""

from __future__ import annotations

import asyncio
from typing import Any

from support.memory_listener import MemoryGateway, json_response

GET = b"GET /status HTTP/1.1\r\nhost: localhost\r\n\r\n"
CONFIG: dict[str, Any] = {
    "gateway": {"hostnames": ["localhost"]},
    "upstreams": {"app": {"servers": ["http://127.0.0.1:9"]}},
    "routes": [{"path_prefix": "/", "upstream": "app", "cache": False}],
}


def answers(draining: bool, requests: bytes) -> tuple[bytes, bool]:
    """What an HTTP/1.1 connection made while the listener is (not) draining writes for
    ``requests``, and whether it is closed then."""
    gw = MemoryGateway(CONFIG, json_response(b'{"ok":true}'))

    async def main() -> tuple[bytes, bool]:
        await gw.start(draining=draining)
        gw.send(requests)
        return await gw.response(), gw.client.closed

    return asyncio.run(main())


def test_http1_the_first_request_is_answered_with_connection_close() -> None:
    written, closed = answers(True, GET + GET)  # the client pipelined a second one
    assert written.startswith(b"HTTP/1.1 200") and written.count(b"HTTP/1.1 ") == 1
    head = written.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nconnection: close" in head
    assert closed


def test_http1_without_draining_the_connection_stays_open() -> None:
    written, closed = answers(False, GET + GET)
    assert written.count(b"HTTP/1.1 200") == 2 and b"connection: close" not in written.lower()
    assert not closed
