"""Interim 1xx responses (RFC 9110 §15.2, 103 Early Hints RFC 8297): queued by the upstream
connection ahead of the final head, written by the listener before the response only."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from support.recording_transport import RecordingTransport

from gateway.config import UpstreamServer
from gateway.http1_cycle import interim_head
from gateway.upstream.connection import UpstreamConnection
from gateway.upstream.events import Interim, ResponseHead
from gateway.upstream.httptools_impl import HttpToolsResponseParser


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 5))


def test_rfc9112_interim_head_wire_format() -> None:
    assert interim_head(103, [(b"link", b"</a.css>; rel=preload")]) == (
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
    )
    assert interim_head(102, []) == b"HTTP/1.1 102 Processing\r\n\r\n"
    assert interim_head(150, []) == b"HTTP/1.1 150 \r\n\r\n"  # an unknown 1xx is still relayed


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
