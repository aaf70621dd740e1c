"""Accept-Encoding negotiation, compressible types, Vary and ETag rules (pure)."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard

from gateway.middleware.encoding import (
    ENCODERS,
    compress_whole,
    is_compressible,
    negotiate,
    weak_etag,
    with_vary,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        (b"", None),
        (b"identity", None),
        (b"gzip", "gzip"),
        (b"x-gzip", "gzip"),
        (b"GZIP", "gzip"),
        (b"gzip, deflate, br", "br"),  # equal q: the server's order
        (b"gzip, deflate, br, zstd", "zstd"),
        (b"br;q=0.5, gzip;q=0.8", "gzip"),
        (b"br;q=1.0, gzip", "br"),
        (b"gzip;q=0", None),  # q=0 excludes
        (b"gzip;q=0, br", "br"),
        (b"*", "zstd"),
        (b"*;q=0.1, gzip;q=0.5", "gzip"),
        (b"*, zstd;q=0, br;q=0", "gzip"),
        (b"*;q=0", None),
        (b"identity;q=1, *;q=0", None),
        (b"gzip;q=abc", None),  # unreadable weight: not accepted
        (b"gzip;q=2", None),  # out of range
        (b"deflate, compress", None),  # only codings we do not make
        (b" gzip ; q=0.3 , br ; q=0.2", "gzip"),
    ],
)
def test_negotiate(header: bytes | None, expected: str | None) -> None:
    assert negotiate(header) == expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (b"text/html; charset=utf-8", True),
        (b"text/event-stream", True),
        (b"application/json", True),
        (b"Application/JSON", True),
        (b"application/problem+json", True),
        (b"application/javascript", True),
        (b"image/svg+xml", True),
        (b"application/atom+xml", True),
        (b"image/png", False),
        (b"application/octet-stream", False),
        (b"application/zip", False),
        (b"video/mp4", False),
        (None, False),
    ],
)
def test_compressible_types(content_type: bytes | None, expected: bool) -> None:
    assert is_compressible(content_type) is expected


def test_vary_is_added_once_and_merged() -> None:
    assert with_vary([]) == [(b"vary", b"Accept-Encoding")]
    assert with_vary([(b"vary", b"Origin")]) == [(b"vary", b"Origin, Accept-Encoding")]
    same = [(b"vary", b"origin, accept-encoding")]
    assert with_vary(same) == same
    star = [(b"vary", b"*")]
    assert with_vary(star) == star


def test_weak_etag() -> None:
    assert weak_etag(b'"abc"') == b'W/"abc"'
    assert weak_etag(b'W/"abc"') == b'W/"abc"'


DATA = b'{"message": "hello", "n": 12345}' * 500


def decode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        out: bytes = brotli.decompress(data)
        return out
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_whole_body_round_trips_and_shrinks(coding: str) -> None:
    packed = compress_whole(coding, DATA)
    assert len(packed) < len(DATA) // 10
    assert decode(coding, packed) == DATA


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_streaming_flushes_every_chunk(coding: str) -> None:
    """What was sent after each chunk decodes to everything given so far: the property that
    lets server-sent events through one by one."""
    encoder = ENCODERS[coding]()
    if coding == "gzip":
        decoder = zlib.decompressobj(31)
        feed = decoder.decompress
    elif coding == "br":
        feed = brotli.Decompressor().process
    else:
        feed = zstandard.ZstdDecompressor().decompressobj().decompress
    received = b""
    for event in (b"data: first\n\n", b"data: second\n\n", b"data: third\n\n"):
        received += feed(encoder.chunk(event))
        assert received.endswith(event)
    received += feed(encoder.finish(b"data: last\n\n"))
    assert received == b"data: first\n\ndata: second\n\ndata: third\n\ndata: last\n\n"
