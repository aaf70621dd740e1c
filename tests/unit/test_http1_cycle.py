"""The HTTP/1.1 response writer (gateway.http1_cycle.GatewayCycle) on a recording transport:
the wire bytes uvicorn's cycle wrote, interim heads, HTTP/1.0 framing, field checks, the head
held until the end of the loop iteration, and back-pressure."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.recording_transport import RecordingTransport
from support.response_cycle import response_cycle
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE

from gateway.asgi import INTERIM, Message
from gateway.corking import CorkedTransport
from gateway.http1_cycle import DONE, GatewayCycle, checked_fields

START: Message = {"type": "http.response.start", "status": 200, "headers": []}
HINT: Message = {"type": INTERIM, "status": 103, "headers": [(b"link", b"</a>")]}


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 5))


DATE = [(b"date", b"Mon, 07 Dec 2026 00:00:00 GMT")]


def cycle_on(
    transport: asyncio.Transport,
    method: str = "GET",
    *,
    http10: bool = False,
    keep_alive: bool = True,
    completed: list[bool] | None = None,
) -> GatewayCycle:
    """A cycle whose server-wide fields are a Date (as uvicorn's plain listener has)."""
    return response_cycle(
        transport,
        method,
        http10=http10,
        keep_alive=keep_alive,
        default_headers=DATE,
        completed=completed,
    )


def corked_transport() -> tuple[RecordingTransport, CorkedTransport]:
    """A recording transport behind a CorkedTransport (inside a running loop: what it holds is
    flushed by a loop callback)."""
    transport = RecordingTransport()
    return transport, CorkedTransport(transport, asyncio.get_running_loop())


def send_all(cycle: GatewayCycle, *messages: Message) -> None:
    async def go() -> None:
        for message in messages:
            await cycle.send(message)

    run(go())


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


def test_a_response_with_a_length_is_written_as_uvicorn_wrote_it() -> None:
    transport, completed = RecordingTransport(), []
    cycle = cycle_on(transport, completed=completed)
    headers = [(b"Content-Length", b"2"), (b"content-type", b"text/plain")]
    send_all(cycle, {**START, "headers": headers}, body(b"ok"))
    assert transport.written == [
        b"HTTP/1.1 200 OK\r\ndate: Mon, 07 Dec 2026 00:00:00 GMT\r\n"
        b"content-length: 2\r\ncontent-type: text/plain\r\n\r\n",
        b"ok",
    ]
    assert cycle.response_complete and completed == [True] and not transport.closing


def test_without_a_length_an_http_1_1_response_is_chunked() -> None:
    transport = RecordingTransport()
    send_all(cycle_on(transport), START, body(b"abc", more=True), body(b""))
    assert transport.written[0].endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert transport.written[1:] == [b"3\r\nabc\r\n", b"0\r\n\r\n"]


def test_http_1_0_response_without_length_is_unframed_never_chunked() -> None:
    transport = RecordingTransport()
    cycle = cycle_on(transport, http10=True)
    send_all(cycle, START, body(b"abc", more=True), body(b"de"))
    head, *rest = transport.written
    assert b"chunked" not in head and head.endswith(b"connection: close\r\n\r\n")
    assert rest == [b"abc", b"de"]
    assert cycle.response_complete and transport.closing  # the close delimits the body


@pytest.mark.parametrize(
    ("method", "status", "headers"),
    [
        ("GET", 200, [(b"content-length", b"3")]),
        ("HEAD", 200, []),
        ("GET", 204, []),
        ("GET", 304, []),
    ],
)
def test_http_1_0_framed_or_bodiless_responses_are_left_alone(
    method: str, status: int, headers: list[tuple[bytes, bytes]]
) -> None:
    transport = RecordingTransport()
    cycle = cycle_on(transport, method, http10=True)
    send_all(cycle, {"type": "http.response.start", "status": status, "headers": headers})
    assert not cycle.unframed and cycle.chunked_encoding is not True
    assert b"chunked" not in transport.written[0]


def test_a_connection_close_field_ends_keep_alive() -> None:
    transport = RecordingTransport()
    cycle = cycle_on(transport)
    send_all(cycle, {**START, "headers": [(b"connection", b"Close")]}, body(b""))
    assert not cycle.keep_alive and transport.closing
    assert transport.written[0].count(b"connection") == 1


@pytest.mark.parametrize(
    "field",
    [
        (b"bad name", b"v"),
        (b"x-ok", b"line\r\nset-cookie: a=b"),
        (b"x-ok", b"nul\x00"),
        (b"x(y)", b"v"),
    ],
)
def test_a_field_uvicorn_would_refuse_is_refused(field: tuple[bytes, bytes]) -> None:
    transport = RecordingTransport()
    with pytest.raises(RuntimeError, match="Invalid HTTP header"):
        send_all(cycle_on(transport), {**START, "headers": [(b"x-fine", b"a\tb"), field]})
    assert transport.written == []


@given(st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=12)), max_size=4))
def test_the_field_check_refuses_exactly_what_uvicorns_patterns_find(
    fields: list[tuple[bytes, bytes]],
) -> None:
    expected = None
    if any(HEADER_RE.search(name) for name, _ in fields):
        expected = "Invalid HTTP header name."
    elif any(HEADER_VALUE_RE.search(value) for _, value in fields):
        expected = "Invalid HTTP header value."
    try:
        checked_fields(fields)
    except RuntimeError as exc:
        assert str(exc) == expected
    else:
        assert expected is None


def test_content_length_mismatches_are_errors() -> None:
    with pytest.raises(RuntimeError, match="longer"):
        send_all(
            cycle_on(RecordingTransport()),
            {**START, "headers": [(b"content-length", b"1")]},
            body(b"ab"),
        )
    with pytest.raises(RuntimeError, match="shorter"):
        send_all(
            cycle_on(RecordingTransport()),
            {**START, "headers": [(b"content-length", b"3")]},
            body(b"ab"),
        )


def test_head_responses_carry_no_body() -> None:
    transport = RecordingTransport()
    cycle = cycle_on(transport, "HEAD")
    send_all(cycle, {**START, "headers": [(b"content-length", b"5")]}, body(b""))
    assert cycle.response_complete
    assert b"chunked" not in transport.written[0]


def test_interim_heads_go_before_the_response_only() -> None:
    transport = RecordingTransport()
    cycle = cycle_on(transport)
    send_all(cycle, HINT, START, HINT)  # the second: too late, dropped without an error
    assert transport.written[0] == b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
    assert len(transport.written) == 2 and transport.written[1].startswith(b"HTTP/1.1 200")


def test_an_http_1_0_client_gets_no_interim_head() -> None:
    transport = RecordingTransport()
    send_all(cycle_on(transport, http10=True), HINT)
    assert transport.written == []


def test_a_response_leaves_in_one_write_at_the_end_of_the_loop_iteration() -> None:
    async def main() -> None:
        transport, corked = corked_transport()
        cycle = cycle_on(corked)
        await cycle.send({**START, "headers": [(b"content-length", b"2")]})
        await cycle.send(body(b"ok"))
        assert transport.written == []  # held until the loop has handled its I/O events
        await asyncio.sleep(0)
        assert len(transport.written) == 1 and transport.written[0].endswith(b"\r\n\r\nok")

    run(main())


def test_a_head_alone_leaves_after_one_iteration() -> None:
    async def main() -> None:
        transport, corked = corked_transport()
        await cycle_on(corked).send(START)
        await asyncio.sleep(0)  # a streaming body is not waited for
        assert len(transport.written) == 1 and transport.written[0].startswith(b"HTTP/1.1 200")

    run(main())


def test_a_held_pipelined_response_goes_before_an_interim_head() -> None:
    async def main() -> None:
        transport, corked = corked_transport()
        corked.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # the previous response, held
        await cycle_on(corked).send(HINT)
        await asyncio.sleep(0)
        assert transport.written == [
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
        ]

    run(main())


def test_send_writes_at_once_and_waits_only_under_back_pressure() -> None:
    async def main() -> None:
        transport = RecordingTransport()
        cycle = cycle_on(transport)
        assert cycle.send(START) is DONE and len(transport.written) == 1
        cycle.flow.pause_writing()
        pending = asyncio.ensure_future(cycle.send(body(b"x", more=True)))
        await asyncio.sleep(0)
        assert not pending.done() and len(transport.written) == 1  # waits for the drain
        cycle.flow.resume_writing()
        await pending
        assert transport.written[-1] == b"1\r\nx\r\n"

    run(main())
