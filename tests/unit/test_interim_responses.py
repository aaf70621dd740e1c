"""Interim 1xx responses (RFC 9110 §15.2, 103 Early Hints RFC 8297): queued by the upstream
connection ahead of the final head, written by the listener before the response only."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from gateway.asgi import INTERIM, Message
from gateway.config import UpstreamServer
from gateway.listener import CorkedTransport, interim_head, interim_sender
from gateway.upstream.connection import UpstreamConnection
from gateway.upstream.events import Interim, ResponseHead
from gateway.upstream.httptools_impl import HttpToolsResponseParser


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 5))


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_rfc9112_interim_head_wire_format() -> None:
    assert interim_head(103, [(b"link", b"</a.css>; rel=preload")]) == (
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
    )
    assert interim_head(102, []) == b"HTTP/1.1 102 Processing\r\n\r\n"
    assert interim_head(150, []) == b"HTTP/1.1 150 \r\n\r\n"  # an unknown 1xx is still relayed


class FakeCycle:
    def __init__(self) -> None:
        self.response_started = False
        self.disconnected = False
        self.sent: list[Message] = []

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.start":
            self.response_started = True


def test_the_listener_writes_interim_heads_before_the_response_only() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport = RecordingTransport()
        corked = CorkedTransport(transport, loop)
        cycle = FakeCycle()
        send = interim_sender(cycle, corked)
        hint: Message = {"type": INTERIM, "status": 103, "headers": [(b"link", b"</a>")]}
        await send(hint)
        assert transport.written == [b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"]
        assert cycle.sent == []  # uvicorn's own send never sees it
        start: Message = {"type": "http.response.start", "status": 200, "headers": []}
        await send(start)
        assert cycle.sent == [start]
        await send(hint)  # after the final head: too late, dropped without an error
        assert len(transport.written) == 1

    run(main())


def test_a_held_pipelined_head_is_written_before_an_interim_one() -> None:
    async def main() -> None:
        transport = RecordingTransport()
        corked = CorkedTransport(transport, asyncio.get_running_loop())
        corked.expect_head = True
        corked.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # the previous response, held
        await interim_sender(FakeCycle(), corked)({"type": INTERIM, "status": 103, "headers": []})
        assert transport.written == [
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\n\r\n",
        ]

    run(main())


def test_the_upstream_connection_hands_out_interim_responses_then_the_head() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn = UpstreamConnection(
            UpstreamServer("127.0.0.1", 9), HttpToolsResponseParser(), 5.0, loop
        )
        conn.connection_made(RecordingTransport())
        conn.start(b"GET / HTTP/1.1\r\n\r\n", head_request=False, has_body=False)
        conn.data_received(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </b.js>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        first = await conn.receive_interim_or_head()
        second = await conn.receive_interim_or_head()
        final = await conn.receive_interim_or_head()
        assert first == Interim(103, [(b"link", b"</a.css>")])
        assert second == Interim(103, [(b"link", b"</b.js>")])
        assert isinstance(final, ResponseHead) and final.status == 200
        assert await conn.receive_interim_or_head() is final  # no interim left
        assert await conn.receive_all() == b"ok"

    run(main())
