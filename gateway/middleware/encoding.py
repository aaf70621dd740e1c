"""Content codings for ``compress``: which one a client accepts, whether a response may be
compressed at all, and the streaming encoders.  No I/O, unit-tested on their own.

Negotiation follows RFC 9110 §12.5.3: each coding of Accept-Encoding with its q-value
(``q=0`` excludes it, ``*`` stands for codings not listed); the highest q wins and ties go to
the server's order, zstd > br > gzip (Traefik's): zstd decodes fastest, br is smallest, every
client has gzip.  No Accept-Encoding, or one that accepts only identity, gets identity.

Encoders flush after every chunk (zlib Z_SYNC_FLUSH, brotli/zstd block flushes), so a stream
of server-sent events reaches the client event by event; each holds only its codec's window
(at most a few MiB for brotli's), whatever the length of the response.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli
import zstandard

from gateway.headers import Headers

PREFERENCE = ("zstd", "br", "gzip")
GZIP_LEVEL = 6  # zlib's default; Nginx's bench counterpart uses gzip_comp_level 6 too
BROTLI_QUALITY = 4  # dynamic content: ~gzip-6 speed with smaller output (11 is for static)
ZSTD_LEVEL = 3  # zstd's default

# Media types worth compressing beyond text/* (Nginx's gzip_types and Traefik's defaults).
COMPRESSIBLE = frozenset(
    {
        b"application/json",
        b"application/javascript",
        b"application/x-javascript",
        b"application/ecmascript",
        b"application/xml",
        b"application/xhtml+xml",
        b"application/rss+xml",
        b"application/atom+xml",
        b"application/x-ndjson",
        b"application/graphql-response+json",
        b"application/wasm",
        b"image/svg+xml",
        b"image/x-icon",
        b"image/bmp",
        b"font/ttf",
        b"font/otf",
        b"application/vnd.ms-fontobject",
    }
)
# Statuses whose body is never compressed: no body, or a part of a representation.
UNTOUCHED_STATUSES = frozenset({204, 206, 304})


def negotiate(accept_encoding: bytes | None) -> str | None:
    """The coding to use for this Accept-Encoding value, or None for identity."""
    if not accept_encoding:
        return None
    weights: dict[str, float] = {}
    for item in accept_encoding.decode("latin-1").split(","):
        coding, *params = item.split(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0  # unreadable: do not guess in the client's favour
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        if coding == "x-gzip":
            coding = "gzip"  # RFC 9110 §8.4.1.3
        weights[coding] = max(q, weights.get(coding, 0.0))
    star = weights.get("*", 0.0)
    best: str | None = None
    best_q = 0.0
    for coding in PREFERENCE:
        q = weights.get(coding, star)
        if q > best_q:
            best, best_q = coding, q
    return best


def media_type(content_type: bytes) -> bytes:
    return content_type.partition(b";")[0].strip().lower()


def is_compressible(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    kind = media_type(content_type)
    return (
        kind.startswith(b"text/")
        or kind in COMPRESSIBLE
        or kind.endswith(b"+json")
        or kind.endswith(b"+xml")
    )


def with_vary(headers: Headers) -> Headers:
    """``headers`` with Accept-Encoding in Vary (added once; ``Vary: *`` left alone)."""
    for i, (name, value) in enumerate(headers):
        if name == b"vary":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"accept-encoding" in tokens or b"*" in tokens:
                return headers
            headers = list(headers)
            headers[i] = (name, value + b", Accept-Encoding")
            return headers
    return [*headers, (b"vary", b"Accept-Encoding")]


def weak_etag(value: bytes) -> bytes:
    """RFC 9110 §8.8.1: a re-encoded body is no longer byte-identical to the original, so a
    strong validator must not vouch for it; ``W/`` keeps it usable for If-None-Match."""
    return value if value.startswith(b"W/") else b"W/" + value


class Encoder(Protocol):
    def chunk(self, data: bytes) -> bytes:
        """Compress ``data`` and flush, so everything given so far can be decoded."""

    def finish(self, data: bytes) -> bytes:
        """Compress the last ``data`` and end the stream."""


class GzipEncoder:
    def __init__(self) -> None:
        self._z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: gzip framing

    def chunk(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush()


class BrotliEncoder:
    def __init__(self) -> None:
        self._c = brotli.Compressor(quality=BROTLI_QUALITY)

    def chunk(self, data: bytes) -> bytes:
        out: bytes = self._c.process(data) + self._c.flush()
        return out

    def finish(self, data: bytes) -> bytes:
        out: bytes = self._c.process(data) + self._c.finish()
        return out


class ZstdEncoder:
    def __init__(self) -> None:
        self._c = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()

    def chunk(self, data: bytes) -> bytes:
        out: bytes = self._c.compress(data) + self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return out

    def finish(self, data: bytes) -> bytes:
        out: bytes = self._c.compress(data) + self._c.flush()
        return out


ENCODERS: dict[str, type[GzipEncoder | BrotliEncoder | ZstdEncoder]] = {
    "gzip": GzipEncoder,
    "br": BrotliEncoder,
    "zstd": ZstdEncoder,
}


def compress_whole(coding: str, data: bytes) -> bytes:
    """A whole body in one call (faster than the streaming objects for one chunk)."""
    if coding == "gzip":
        return zlib.compress(data, GZIP_LEVEL, wbits=31)
    if coding == "br":
        out: bytes = brotli.compress(data, quality=BROTLI_QUALITY)
        return out
    result: bytes = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
    return result
