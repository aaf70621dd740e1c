"""The pure pieces of WebSocket tunnelling: which requests ask for it, and what the response
parsers make of a 101 (both implementations alike)."""

from __future__ import annotations

import pytest

from gateway.handlers.websocket import switching_protocols_head
from gateway.listener import asks_for_websocket
from gateway.upstream.events import ProtocolError, ResponseHead, Upgraded
from gateway.upstream.h11_impl import H11ResponseParser
from gateway.upstream.httptools_impl import HttpToolsResponseParser
from gateway.upstream.parsers import ResponseParser

SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=12\r\n\r\n"
)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"connection", b"Upgrade"), (b"upgrade", b"websocket")], True),
        ([(b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"WebSocket")], True),
        ([(b"upgrade", b"websocket"), (b"connection", b"upgrade")], True),
        ([(b"upgrade", b"websocket")], False),  # Upgrade not listed in Connection
        ([(b"connection", b"upgrade"), (b"upgrade", b"h2c")], False),
        ([(b"connection", b"upgrade, HTTP2-Settings"), (b"upgrade", b"h2c, websocket")], True),
        ([], False),
    ],
)
def test_asks_for_websocket(headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert asks_for_websocket(headers) is expected


@pytest.fixture(params=[HttpToolsResponseParser, H11ResponseParser], ids=["httptools", "h11"])
def parser(request: pytest.FixtureRequest) -> ResponseParser:
    parser: ResponseParser = request.param()
    return parser


def test_a_101_to_an_upgrade_gives_the_head_then_the_tunnel_bytes(parser: ResponseParser) -> None:
    parser.start(head_request=False, upgrade=True)
    frame = b"\x81\x05hello"
    events = parser.feed(SWITCH + frame)
    head, upgraded = events
    assert isinstance(head, ResponseHead) and head.status == 101
    assert (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits=12") in (
        head.headers
    )
    assert isinstance(upgraded, Upgraded) and upgraded.data == frame


def test_a_101_split_across_reads(parser: ResponseParser) -> None:
    parser.start(head_request=False, upgrade=True)
    assert parser.feed(SWITCH[:40]) == []
    head, upgraded = parser.feed(SWITCH[40:])
    assert isinstance(head, ResponseHead) and isinstance(upgraded, Upgraded)
    assert upgraded.data == b""


def test_an_upgrade_refused_is_an_ordinary_response(parser: ResponseParser) -> None:
    parser.start(head_request=False, upgrade=True)
    events = parser.feed(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    assert isinstance(events[0], ResponseHead) and events[0].status == 403
    assert b"".join(e for e in events if isinstance(e, bytes)) == b"no"
    assert not any(isinstance(e, Upgraded) for e in events)


def test_a_101_nobody_asked_for_is_a_protocol_error() -> None:
    parser = HttpToolsResponseParser()
    parser.start(head_request=False)
    with pytest.raises(ProtocolError, match="switched protocols unasked"):
        parser.feed(SWITCH)


def test_the_101_reaches_the_client_with_every_upstream_header() -> None:
    headers = [(b"upgrade", b"websocket"), (b"sec-websocket-protocol", b"chat")]
    assert switching_protocols_head(headers) == (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
        b"sec-websocket-protocol: chat\r\n\r\n"
    )
