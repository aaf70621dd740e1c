"""Request buffering (Nginx's ``proxy_request_buffering on``): a request body is read whole
from the client before any upstream connection is used.

Why: a client that trickles its body (or sends a head announcing one and then nothing) would
otherwise hold an upstream connection, and often an upstream worker, for as long as it likes;
and when the upstream then timed out, the 504 blamed a healthy server.  Buffered, the slow
client only costs the gateway a little memory or disk, its stall ends in a 408 from the
listener's ``body_timeout``, and the upstream sees one fast request with a Content-Length
(a chunked body is de-chunked, so its trailers go nowhere).  A buffered body can also be
replayed on another server, which a streamed one cannot.

The body stays in memory up to ``memory_limit`` bytes, then moves to an anonymous temporary
file (``SpooledTemporaryFile``), up to ``max_body_bytes`` in total (413 beyond).  Routes with
``request_buffering = false`` stream instead (``gateway.handlers.proxy.RequestBody``).
"""

from __future__ import annotations

import tempfile
from typing import IO

from gateway.asgi import Receive
from gateway.errors import ClientDisconnected, ContentTooLarge, GatewayError, UpstreamClosed
from gateway.upstream.connection import UpstreamConnection

CHUNK = 64 * 1024  # what one write upstream takes from a spooled file


class BufferedBody:
    """A request body read whole; written upstream as often as an attempt needs it."""

    __slots__ = ("size", "_memory", "_file", "sent", "chunked", "more")

    def __init__(self) -> None:
        self.size = 0
        self._memory: list[bytes] | None = []
        self._file: IO[bytes] | None = None
        # The ``RequestBody`` interface the proxy reads: a buffered body was never sent in a
        # way that cannot be repeated, is framed by Content-Length, and is complete.
        self.sent = False
        self.chunked = False
        self.more = False

    @classmethod
    async def read(cls, receive: Receive, limit: int, memory_limit: int) -> BufferedBody:
        """Read the client's body; ContentTooLarge past ``limit``, ClientDisconnected if the
        client leaves (or the listener ends a stalled body with 408) before its end."""
        body = cls()
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected("client disconnected while sending the request body")
                data: bytes = message.get("body", b"")
                if data:
                    body._append(data, limit, memory_limit)
                if not message.get("more_body", False):
                    return body
        except BaseException:
            body.close()
            raise

    def _append(self, data: bytes, limit: int, memory_limit: int) -> None:
        self.size += len(data)
        if self.size > limit:
            raise ContentTooLarge(
                f"request body is larger than the {limit}-byte limit (max_body_bytes)"
            )
        if self._memory is not None:
            self._memory.append(data)
            if self.size <= memory_limit:
                return
            # Past the memory bound: everything so far, and all that follows, goes to disk.
            self._file = tempfile.TemporaryFile(prefix="gateway-body-")
            self._file.write(b"".join(self._memory))
            self._memory = None
            return
        assert self._file is not None
        self._file.write(data)

    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    def chunks(self) -> list[bytes] | None:
        """The body's pieces when it is held in memory (None: it is in a file)."""
        return self._memory

    def write_to(self, conn: UpstreamConnection) -> bool:
        """Write a body held in memory in one go; False when it is in a file (``pump``)."""
        if self._memory is None:
            return False
        if self.size:
            conn.write(b"".join(self._memory) if len(self._memory) > 1 else self._memory[0])
        conn.finish_request()
        return True

    async def pump(self, conn: UpstreamConnection) -> None:
        """Copy a spooled body upstream in CHUNK pieces, honouring back-pressure."""
        file = self._file
        assert file is not None
        try:
            file.seek(0)
            while data := file.read(CHUNK):
                conn.write(data)
                await conn.drain()
            conn.finish_request()
        except GatewayError as exc:
            conn.abort(exc)
        except Exception as exc:  # noqa: BLE001 - any failure must end the exchange, not hang it
            conn.abort(UpstreamClosed(f"request body failed: {exc}", request_sent=True))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory = None
