"""``compress``: gzip, Brotli or zstd response bodies, by the client's Accept-Encoding.

What is compressed: a compressible media type (``encoding.is_compressible``), no
Content-Encoding yet, no ``Cache-Control: no-transform`` (RFC 9110 §7.7), not a 204/206/304,
not a HEAD, and not a body the upstream declared shorter than ``min_bytes``.  Every response
whose type could have been compressed gets ``Vary: Accept-Encoding``, whatever this client
accepted, so shared caches keep the variants apart; so does a 304 for one (its type, or the
client's copy being our encoded variant, says so: RFC 9110 §15.4.5).  A compressed response
loses its Content-Length (the listener frames it) and Accept-Ranges (ranges of the identity
body no longer apply), and a strong ETag becomes weak.

Bodies with a declared length arrive at once (the proxy sends the head and the body back to
back), so the head is held for the first body message: a body that is complete in it is
compressed in one call and gets its correct Content-Length.  Anything else - no declared
length, a long stream, server-sent events - is compressed chunk by chunk with a flush per
upstream chunk, in memory bounded by the codec's window.

With the cache: ``GatewayApp`` puts a caching route's ``compress`` between the cache and the
proxy (``wrap_forward``), so the cache stores each encoding once (the Vary above selects the
variant) and a hit costs no compression; see the README's Middlewares section for the
measurement behind that.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from gateway.asgi import Message, Send
from gateway.config import MiddlewareSettings, Settings
from gateway.headers import Headers
from gateway.middleware.encoding import (
    ENCODERS,
    UNTOUCHED_STATUSES,
    Encoder,
    compress_whole,
    is_compressible,
    negotiate,
    weak_etag,
    with_vary,
)
from gateway.request import Forward, Handler, Request

DEFAULT_MIN_BYTES = 1024
# Chunks at least this large are compressed in a thread (zlib, brotli and zstd release the
# GIL): gzip takes ~3 ms for 256 KiB, which would stall every other request of the process.
# Smaller ones are done inline, where the thread hop (~0.1 ms) would cost more than it saves.
OFFLOAD_BYTES = 256 * 1024


async def _run(function: Callable[[bytes], bytes], data: bytes) -> bytes:
    if len(data) >= OFFLOAD_BYTES:
        return await asyncio.to_thread(function, data)
    return function(data)


def accepted_coding(headers: Headers) -> str | None:
    values = [value for name, value in headers if name == b"accept-encoding"]
    return negotiate(b", ".join(values)) if values else None


class CompressingSend:
    """The ``send`` that compresses one response (see the module docstring)."""

    __slots__ = ("send", "coding", "min_bytes", "head", "if_none_match", "held", "encoder")

    def __init__(
        self,
        send: Send,
        coding: str | None,
        min_bytes: int,
        *,
        head: bool = False,
        if_none_match: bytes | None = None,
    ) -> None:
        self.send = send
        self.coding = coding
        self.min_bytes = min_bytes
        self.head = head
        self.if_none_match = if_none_match
        self.held: Message | None = None
        self.encoder: Encoder | None = None

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._start(message)
        elif kind != "http.response.body":
            await self.send(message)
        elif self.held is not None:
            await self._first_body(message)
        elif self.encoder is not None:
            await self._stream(message)
        else:
            await self.send(message)

    async def _start(self, message: Message) -> None:
        status: int = message["status"]
        headers: Headers = message["headers"]
        content_type = encoded = length = etag = None
        no_transform = False
        for name, value in headers:
            if name == b"content-type":
                content_type = value
            elif name == b"content-encoding" or name == b"content-range":
                encoded = value
            elif name == b"content-length":
                length = value
            elif name == b"etag":
                etag = value
            elif name == b"cache-control" and b"no-transform" in value.lower():
                no_transform = True
        if status == 304 and encoded is None:
            # A 304 carries the Vary and ETag its 200 would have had (RFC 9110 §15.4.5).
            inm, ours = self.if_none_match, False
            if self.coding is not None and etag is not None and inm:
                ours = weak_etag(etag) in inm
            if ours:  # the client's copy is our weakened variant: the 304 must say so too
                headers = [(n, weak_etag(v) if n == b"etag" else v) for n, v in headers]
            if ours or (not no_transform and is_compressible(content_type)):
                headers = with_vary(headers)
            await self.send({**message, "headers": headers})
            return
        skip = no_transform or status in UNTOUCHED_STATUSES or status < 200
        if skip or encoded is not None or not is_compressible(content_type):
            await self.send(message)
            return
        headers = with_vary(headers)
        small = length is not None and (not length.isdigit() or int(length) < self.min_bytes)
        if self.coding is None or self.head or small:
            await self.send({**message, "headers": headers})
            return
        out: Headers = []
        for name, value in headers:
            if name == b"content-length" or name == b"accept-ranges":
                continue
            out.append((name, weak_etag(value) if name == b"etag" else value))
        out.append((b"content-encoding", self.coding.encode()))
        start = {**message, "headers": out}
        if length is not None:
            self.held = start
            return
        self.encoder = ENCODERS[self.coding]()
        await self.send(start)

    async def _first_body(self, message: Message) -> None:
        start, self.held = self.held, None
        assert start is not None and self.coding is not None
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            coding = self.coding
            data = await _run(lambda whole: compress_whole(coding, whole), body)
            start["headers"].append((b"content-length", b"%d" % len(data)))
            await self.send(start)
            await self.send({"type": "http.response.body", "body": data})
            return
        self.encoder = ENCODERS[self.coding]()
        await self.send(start)
        await self._stream(message)

    async def _stream(self, message: Message) -> None:
        encoder = self.encoder
        assert encoder is not None
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            if body:
                data = await _run(encoder.chunk, body)
                await self.send({"type": "http.response.body", "body": data, "more_body": True})
            return
        await self.send({"type": "http.response.body", "body": await _run(encoder.finish, body)})


class Compress:
    applies_to_websocket = False  # a tunnel's bytes are not an HTTP body

    def __init__(self, config: MiddlewareSettings, settings: Settings) -> None:
        self.min_bytes: int = config.options.get("min_bytes", DEFAULT_MIN_BYTES)

    def compressing_send(self, request: Request, send: Send) -> CompressingSend:
        headers = request.headers
        if_none_match = None
        for name, value in headers:
            if name == b"if-none-match":
                if_none_match = value
        return CompressingSend(
            send,
            accepted_coding(headers),
            self.min_bytes,
            head=request.method == "HEAD",
            if_none_match=if_none_match,
        )

    def wrap(self, handler: Handler) -> Handler:
        async def compressed(request: Request) -> None:
            send = self.compressing_send(request, request.send)
            await handler(dataclasses.replace(request, send=send))

        return compressed

    def wrap_forward(self, forward: Forward) -> Forward:
        """The same around the proxy's ``forward``, inside the cache (module docstring)."""

        async def compressed(request: Request, send: Send, request_headers: Headers | None) -> None:
            await forward(request, self.compressing_send(request, send), request_headers)

        return compressed
