"""The upstream response parsers: bytes in, ``ResponseHead`` / ``bytes`` / ``EndOfMessage`` out.

The httptools and h11 implementations are interchangeable, so every behaviour test runs on
both, and a differential test feeds both the same edge-case inputs and compares the outcome.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.http1_cycle import checked_fields
from gateway.upstream.events import (
    END_OF_MESSAGE,
    MAX_RESPONSE_HEAD,
    EndOfMessage,
    Interim,
    ProtocolError,
    ResponseHead,
)
from gateway.upstream.h11_impl import H11ResponseParser
from gateway.upstream.httptools_impl import HttpToolsResponseParser
from gateway.upstream.parsers import ResponseParser, parser_class

PARSERS: dict[str, type[ResponseParser]] = {
    "httptools": HttpToolsResponseParser,
    "h11": H11ResponseParser,
}


@pytest.fixture(params=list(PARSERS))
def parser(request: pytest.FixtureRequest) -> ResponseParser:
    return PARSERS[request.param]()


Event = tuple[Any, ...]


def normalize(events: Iterable[object]) -> list[Event]:
    """Events as comparable tuples, with adjacent body pieces joined (how a body is split
    into pieces is not part of the contract)."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, bytes):
            if out and out[-1][0] == "body":
                out[-1] = ("body", out[-1][1] + event)
            elif event:
                out.append(("body", event))
        elif isinstance(event, ResponseHead):
            out.append(("head", event.status, event.headers, event.keep_alive, event.http_version))
        elif isinstance(event, Interim):
            out.append(("interim", event.status, event.headers))
        else:
            assert isinstance(event, EndOfMessage)
            out.append(("end",))
    return out


def parse(
    parser: ResponseParser, data: bytes, *, head: bool = False, eof: bool = False
) -> list[Event]:
    parser.start(head_request=head)
    events = list(parser.feed(data))
    if eof:
        events += parser.feed_eof()
    return normalize(events)


def test_content_length_response(parser: ResponseParser) -> None:
    """Head (names lowercased, wire order kept), body, end; HTTP/1.1 keeps the connection."""
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert parse(parser, data) == [
        (
            "head",
            200,
            [(b"content-type", b"text/plain"), (b"x-a", b"1"), (b"content-length", b"5")],
            True,
            "1.1",
        ),
        ("body", b"hello"),
        ("end",),
    ]


def test_chunked_response_with_extensions_and_trailers(parser: ResponseParser) -> None:
    """Chunked framing is removed: the body is the chunk data only."""
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    events = parse(parser, data)
    assert events[1:] == [("body", b"hello world"), ("end",)]


def test_chunked_is_case_insensitive(parser: ResponseParser) -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n1\r\nx\r\n0\r\n\r\n"
    assert parse(parser, data)[1:] == [("body", b"x"), ("end",)]


def test_byte_by_byte_feeding_gives_the_same_events(parser: ResponseParser) -> None:
    """Events do not depend on how the bytes are split into reads."""
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    whole = parse(type(parser)(), data)
    parser.start(head_request=False)
    events: list[object] = []
    for i in range(len(data)):
        events += parser.feed(data[i : i + 1])
    assert normalize(events) == whole
    assert whole[-2:] == [("body", b"abcde"), ("end",)]


@given(
    body=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    name=st.sampled_from(list(PARSERS)),
)
def test_any_split_gives_the_same_events(body: bytes, cuts: list[int], name: str) -> None:
    """A chunked body split at arbitrary points arrives whole, then the message ends."""
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7)
    )
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    parser = PARSERS[name]()
    parser.start(head_request=False)
    events: list[object] = []
    for start, end in zip(points, points[1:], strict=False):
        events += parser.feed(data[start:end])
    normalized = normalize(events)
    assert normalized[1:] == ([("body", body)] if body else []) + [("end",)]


def test_head_response_ends_at_the_head(parser: ResponseParser) -> None:
    """A HEAD response's Content-Length describes a body that is not sent."""
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    assert parse(parser, data, head=True) == [
        ("head", 200, [(b"content-length", b"100")], True, "1.1"),
        ("end",),
    ]


def test_keep_alive_sequence_mixing_head_and_get(parser: ResponseParser) -> None:
    """One parser serves consecutive exchanges on a connection, HEAD ones included."""
    exchanges = [
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", b"abc"),
        (True, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", None),
        (True, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", None),
        (
            False,
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n",
            b"xy",
        ),
        (False, b"HTTP/1.1 204 No Content\r\n\r\n", None),
    ]
    for head, data, body in exchanges:
        events = parse(parser, data, head=head)
        assert events[0][0] == "head" and events[-1] == ("end",)
        assert events[1:-1] == ([("body", body)] if body else [])


@pytest.mark.parametrize("status", [204, 304])
def test_responses_without_a_body(parser: ResponseParser, status: int) -> None:
    """204 and 304 end at the head, even with a Content-Length (304 describes the resource)."""
    extra = b"Content-Length: 10\r\n" if status == 304 else b""
    events = parse(parser, b"HTTP/1.1 %d X\r\n%s\r\n" % (status, extra))
    assert [e[0] for e in events] == ["head", "end"]
    assert events[0][1] == status


def test_rfc9110_15_2_interim_responses_are_events_before_the_head(parser: ResponseParser) -> None:
    """102-199 become ``Interim`` events in order (relayed, never cached); 100 Continue is
    dropped (the gateway answers a client's Expect itself); the final response follows."""
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    )
    assert parse(parser, data) == [
        ("interim", 102, []),
        ("interim", 103, [(b"link", b"</a.css>")]),
        ("head", 200, [(b"content-length", b"1")], True, "1.1"),
        ("body", b"x"),
        ("end",),
    ]


def test_connection_close_is_not_kept_alive(parser: ResponseParser) -> None:
    data = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"
    assert parse(parser, data)[0][3] is False


@pytest.mark.parametrize(
    "data",
    [b"HTTP/1.0 200 OK\r\n\r\nsome body", b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\n\r\nsome body"],
    ids=["http10", "http11-unframed"],
)
def test_body_delimited_by_close_ends_at_eof(parser: ResponseParser, data: bytes) -> None:
    """Without Content-Length or chunked the body runs until the server closes; such a
    connection cannot be reused."""
    parser.start(head_request=False)
    events = normalize(parser.feed(data))
    assert events[0][3] is False
    assert events[1:] == [("body", b"some body")]
    assert normalize(parser.feed_eof()) == [("end",)]


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ],
    ids=["content-length", "chunked", "head"],
)
def test_truncated_response_never_ends(parser: ResponseParser, data: bytes) -> None:
    """EOF inside a framed message is not an end: the connection layer reports the break."""
    events = parse(parser, data, eof=True)
    assert ("end",) not in events


@pytest.mark.parametrize(
    "data",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX A: 1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
    ids=[
        "status-line",
        "status-code",
        "space-in-name",
        "nul-in-value",
        "negative-length",
        "signed-length",
        "conflicting-lengths",
        "chunk-size",
        "switching-protocols",
    ],
)
def test_invalid_response_is_a_protocol_error(parser: ResponseParser, data: bytes) -> None:
    parser.start(head_request=False)
    with pytest.raises(ProtocolError):
        parser.feed(data)


@pytest.mark.parametrize("parser_name", sorted(PARSERS))
@given(name=st.binary(min_size=1, max_size=8), value=st.binary(max_size=8))
def test_a_field_the_parser_accepts_passes_the_response_writers_check(
    parser_name: str, name: bytes, value: bytes
) -> None:
    """The express lane writes the upstream's fields without ``checked_fields``
    (``GatewayCycle.respond``): this holds both parsers to refusing what it would."""
    parser = PARSERS[parser_name]()
    parser.start(head_request=False)
    data = b"HTTP/1.1 200 OK\r\n" + name + b": " + value + b"\r\ncontent-length: 0\r\n\r\n"
    try:
        events = parser.feed(data)
    except ProtocolError:
        return
    for event in events:
        if isinstance(event, ResponseHead):
            checked_fields(event.headers)


@pytest.mark.parametrize("parser_name", sorted(PARSERS))
def test_bytes_after_the_response_are_never_the_next_response(parser_name: str) -> None:
    """Extra bytes after a complete response (a broken or hostile upstream) must not be
    taken as the response to the next request on the connection (response desync)."""
    parser = PARSERS[parser_name]()
    with pytest.raises(ProtocolError):
        parser.start(head_request=False)
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfake!")
        parser.start(head_request=False)
        parser.feed(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nreal")


def test_transfer_coding_without_chunked_is_read_until_close() -> None:
    """RFC 9112 §6.3: a response whose Transfer-Encoding does not end in chunked is read
    until the server closes the connection."""
    parser = PARSERS["httptools"]()
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc"
    assert parse(parser, data, eof=True)[1:] == [("body", b"abc"), ("end",)]


def test_h11_fallback_refuses_a_transfer_coding_without_chunked() -> None:
    """h11 does not implement close-delimited transfer codings: the fallback answers 502
    (a clean ProtocolError) rather than guessing where the body ends."""
    parser = PARSERS["h11"]()
    with pytest.raises(ProtocolError):
        parse(parser, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc", eof=True)


@pytest.mark.parametrize("parser_name", sorted(PARSERS))
def test_junk_after_a_response_delivers_it_and_closes_the_connection(parser_name: str) -> None:
    """The complete response still reaches the client, but the connection is never reused:
    the junk must not become the next request's response."""
    parser = PARSERS[parser_name]()
    events = parse(parser, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK")
    assert events[1:] == [("body", b"ok"), ("end",)]
    assert parser.must_close


def outcome(name: str, data: bytes, *, head: bool = False, eof: bool = False) -> object:
    """Events, or "error" for a ProtocolError (messages may differ between parsers)."""
    try:
        return parse(PARSERS[name](), data, head=head, eof=eof)
    except ProtocolError:
        return "error"


# RFC-permitted leniencies of h11 that llhttp does not share: obs-fold may be replaced by
# SP (RFC 9112 §5.2), a bare LF may end a line (§2.2), identical lengths may be merged
# (RFC 9110 §8.6).  Documented here rather than hidden.
PERMITTED_DIFFERENCES = {
    "obs-fold": (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n",
        "httptools refuses obs-fold, h11 unfolds it",
    ),
    "repeated-identical-length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "RFC 9110 §8.6 lets a recipient merge identical Content-Length values; h11 does",
    ),
    "bare-lf": (
        b"HTTP/1.1 200 OK\nContent-Length: 1\n\nx",
        "httptools refuses bare LF line endings, h11 accepts them",
    ),
}
AGREED = {
    "junk-after-response": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK",
    "http10-keep-alive": b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx",
    "content-length-and-chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    ),
    "http2-status-line": b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "no-reason-phrase": b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    "empty-header-value": b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("data", [pytest.param(data, id=name) for name, data in AGREED.items()])
def test_both_parsers_agree_on_edge_cases(data: bytes) -> None:
    """The h11 fallback behaves exactly like httptools: same events or both an error."""
    assert outcome("httptools", data, eof=True) == outcome("h11", data, eof=True)


@pytest.mark.parametrize(
    "data", [pytest.param(data, id=name) for name, (data, _) in PERMITTED_DIFFERENCES.items()]
)
def test_h11_fallback_is_lenient_only_where_the_rfc_allows(data: bytes) -> None:
    assert outcome("httptools", data, eof=True) == "error"
    assert outcome("h11", data, eof=True) != "error"


def test_parser_class_auto_prefers_httptools() -> None:
    """Chosen like uvicorn's "auto": httptools when importable; names map to the classes."""
    assert parser_class() is HttpToolsResponseParser
    assert parser_class("httptools") is HttpToolsResponseParser
    assert parser_class("h11") is H11ResponseParser


def test_end_of_message_is_a_shared_marker() -> None:
    assert isinstance(END_OF_MESSAGE, EndOfMessage)


# -- issue 13: responses an upstream must not be able to smuggle -------------------------------


@pytest.mark.parametrize("parser_name", sorted(PARSERS))
def test_a_second_response_in_the_same_read_never_replaces_the_first(parser_name: str) -> None:
    """Two responses for one request: the first is delivered whole (its status and its body),
    the second is dropped and the connection is never reused."""
    parser = PARSERS[parser_name]()
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 6\r\n\r\nsecond"
    )
    events = parse(parser, data)
    assert [e for e in events if e[0] == "head"][0][1] == 200
    assert len([e for e in events if e[0] == "head"]) == 1
    assert events[1:] == [("body", b"first"), ("end",)]
    assert parser.must_close


@pytest.mark.parametrize("parser_name", sorted(PARSERS))
@pytest.mark.parametrize("pieces", [1, 64])
def test_an_oversized_response_head_is_a_protocol_error(parser_name: str, pieces: int) -> None:
    """A head over MAX_RESPONSE_HEAD is refused, whether it arrives in one read or many,
    in one huge field or in many fields."""
    field = b"X-Big: " + b"a" * (MAX_RESPONSE_HEAD + 10) + b"\r\n"
    many = b"".join(b"X-%d: %s\r\n" % (i, b"b" * 100) for i in range(800))
    for fields in (field, many):
        parser = PARSERS[parser_name]()
        parser.start(head_request=False)
        data = b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n"
        size = -(-len(data) // pieces)
        with pytest.raises(ProtocolError, match="too big a head"):
            for i in range(0, len(data), size):
                parser.feed(data[i : i + size])


@pytest.mark.parametrize("parser_name", sorted(PARSERS))
def test_a_head_just_under_the_bound_is_accepted(parser_name: str) -> None:
    parser = PARSERS[parser_name]()
    data = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_RESPONSE_HEAD - 200) + b"\r\n\r\n"
    events = parse(parser, data.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"))
    assert events[0][1] == 200


@pytest.mark.parametrize("parser_name", sorted(PARSERS))
@pytest.mark.parametrize("status", [204, 304])
def test_a_body_after_a_204_or_304_is_dropped_and_closes(parser_name: str, status: int) -> None:
    """RFC 9112 §6.3: 204 and 304 end at their head; bytes after it are not a body and not the
    next response: the response is delivered without them, the connection is not reused."""
    parser = PARSERS[parser_name]()
    data = b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\nhello" % status
    events = parse(parser, data)
    assert events[0][1] == status
    assert events[1:] == [("end",)]
    assert parser.must_close


@pytest.mark.parametrize("parser_name", sorted(PARSERS))
def test_a_body_after_a_head_response_closes(parser_name: str) -> None:
    parser = PARSERS[parser_name]()
    events = parse(parser, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", head=True)
    assert events[1:] == [("end",)]
    assert parser.must_close
