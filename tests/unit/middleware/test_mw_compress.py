"""``CompressingSend`` driven with ASGI messages: which responses are compressed and how
their headers change (no sockets)."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from typing import Any

from gateway.asgi import Message
from gateway.headers import Headers
from gateway.middleware.compress import CompressingSend, accepted_coding

BODY = b'{"k": "' + b"v" * 4000 + b'"}'
JSON = (b"content-type", b"application/json")


def run(
    messages: list[Message], coding: str | None = "gzip", *, head: bool = False, **kw: Any
) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def main() -> None:
        wrapper = CompressingSend(send, coding, 1024, head=head, **kw)
        for message in messages:
            await wrapper(message)

    asyncio.run(main())
    return sent


def start(status: int = 200, headers: Headers | None = None) -> Message:
    return {"type": "http.response.start", "status": status, "headers": headers or []}


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


def header(message: Message, name: bytes) -> bytes | None:
    return next((v for n, v in message["headers"] if n == name), None)


def test_known_length_body_is_compressed_whole_with_a_correct_length() -> None:
    headers = [JSON, (b"content-length", b"%d" % len(BODY)), (b"etag", b'"v1"')]
    headers.append((b"accept-ranges", b"bytes"))
    head, out = run([start(headers=headers), body(BODY)])
    assert header(head, b"content-encoding") == b"gzip"
    assert header(head, b"content-length") == b"%d" % len(out["body"])
    assert header(head, b"etag") == b'W/"v1"'
    assert header(head, b"vary") == b"Accept-Encoding"
    assert header(head, b"accept-ranges") is None
    assert gzip.decompress(out["body"]) == BODY


def test_stream_without_length_is_compressed_per_chunk_without_length() -> None:
    sent = run([start(headers=[JSON]), body(BODY, True), body(b"", True), body(BODY)])
    head, first, last = sent
    assert header(head, b"content-encoding") == b"gzip"
    assert header(head, b"content-length") is None
    decoder = zlib.decompressobj(31)
    assert decoder.decompress(first["body"]) == BODY  # flushed: decodable on its own
    assert first["more_body"] is True
    assert decoder.decompress(last["body"]) == BODY
    assert last.get("more_body", False) is False


def test_known_length_streamed_in_parts_drops_the_identity_length() -> None:
    headers = [JSON, (b"content-length", b"%d" % (2 * len(BODY)))]
    head, first, last = run([start(headers=headers), body(BODY, True), body(BODY)])
    assert header(head, b"content-length") is None
    assert gzip.decompress(first["body"] + last["body"]) == BODY * 2


def test_client_accepting_nothing_gets_identity_with_vary() -> None:
    headers = [JSON, (b"content-length", b"%d" % len(BODY))]
    head, out = run([start(headers=headers), body(BODY)], coding=None)
    assert header(head, b"content-encoding") is None
    assert header(head, b"content-length") == b"%d" % len(BODY)
    assert header(head, b"vary") == b"Accept-Encoding"
    assert out["body"] == BODY


def test_small_body_is_not_compressed_but_varies() -> None:
    head, out = run([start(headers=[JSON, (b"content-length", b"10")]), body(b"0123456789")])
    assert header(head, b"content-encoding") is None
    assert header(head, b"vary") == b"Accept-Encoding"
    assert out["body"] == b"0123456789"


def test_untouched_responses() -> None:
    cases = [
        [(b"content-type", b"image/png"), (b"content-length", b"4002")],
        [JSON, (b"content-encoding", b"br")],
        [JSON, (b"cache-control", b"public, no-transform")],
        [JSON, (b"content-range", b"bytes 0-9/100")],
    ]
    for headers in cases:
        head, out = run([start(headers=list(headers)), body(BODY)])
        assert head["headers"] == headers, headers
        assert out["body"] == BODY
    for status in (204, 206):
        head, _ = run([start(status, [JSON]), body(b"")])
        assert head["headers"] == [JSON]


def test_head_gets_vary_but_no_encoding() -> None:
    headers = [JSON, (b"content-length", b"%d" % len(BODY))]
    (head, out) = run([start(headers=headers), body(b"")], head=True)
    assert header(head, b"content-encoding") is None
    assert header(head, b"content-length") == b"%d" % len(BODY)
    assert header(head, b"vary") == b"Accept-Encoding"


def test_304_to_a_client_holding_the_encoded_variant_has_the_weak_etag() -> None:
    (head, _) = run([start(304, [(b"etag", b'"v1"')]), body(b"")], if_none_match=b'W/"v1"')
    assert header(head, b"etag") == b'W/"v1"'
    assert header(head, b"vary") == b"Accept-Encoding"  # as its 200 had (RFC 9110 §15.4.5)
    (head, _) = run([start(304, [(b"etag", b'"v1"')]), body(b"")], if_none_match=b'"v1"')
    assert header(head, b"etag") == b'"v1"'


def test_304_of_a_compressible_type_has_vary_and_others_not() -> None:
    (head, _) = run([start(304, [JSON, (b"etag", b'"v1"')]), body(b"")], if_none_match=b'"v1"')
    assert header(head, b"vary") == b"Accept-Encoding"
    png = (b"content-type", b"image/png")
    (head, _) = run([start(304, [png, (b"etag", b'"v1"')]), body(b"")], if_none_match=b'"v1"')
    assert header(head, b"vary") is None
    (head, _) = run([start(304, [(b"etag", b'"v1"')]), body(b"")], if_none_match=b'"v1"')
    assert header(head, b"vary") is None  # nothing says the 200 could have been compressed


def test_accepted_coding_joins_repeated_fields() -> None:
    assert accepted_coding([(b"accept-encoding", b"gzip;q=0.5"), (b"accept-encoding", b"br")])
    assert accepted_coding([(b"accept-encoding", b"gzip;q=0")]) is None
    assert accepted_coding([]) is None


def test_large_chunks_are_compressed_off_the_event_loop() -> None:
    """A 1 MiB body (a cache entry, a static file chunk) round-trips through the thread."""
    big = b'{"k": "' + b"0123456789abcdef" * 65536 + b'"}'
    headers = [JSON, (b"content-length", b"%d" % len(big))]
    head, out = run([start(headers=headers), body(big)])
    assert gzip.decompress(out["body"]) == big
    assert header(head, b"content-length") == b"%d" % len(out["body"])
    head, first, last = run([start(headers=[JSON]), body(big, True), body(big)], coding="gzip")
    assert gzip.decompress(first["body"] + last["body"]) == big + big
