"""Writes held until the event loop has handled the I/O events of its poll, then sent together.

The cost of a reply on loopback or a LAN is mostly not the interpreter's: it is the ``send()``
that wakes the peer (the client, a load generator, an upstream worker) out of its own poll.
Written from each request's callback, every reply wakes the peer again, with the interpreter's
work for the next request in between.  Held until the loop has handled every event of its poll
and written back to back, the replies to a burst of requests wake it about once: measured on a
uvloop TLS server doing 12 µs of work per request (``bench/write_batch.py``, ``wrk -t2
-c32``), 37,067 -> 45,509 req/s and 26.9 -> 21.8 µs of CPU per request; with 100 µs of work
7,799 -> 8,998 req/s (bench/README.md, "Session 6").  A reply waits at most for the rest of
its poll's events, and a lone request for nothing.

``CorkedTransport`` wraps a connection's transport; ``WriteBatch`` (one per event loop) flushes
every connection that holds bytes from one ``call_soon`` callback.  The HTTP/1.1 listener
(``gateway.listener``), the upstream connections (``gateway.upstream.connection``) and both
ends of a WebSocket tunnel (``gateway.handlers.websocket``) write through them; HTTP/2
(``gateway.http2``) already sends each connection's frames once per iteration.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

log = logging.getLogger("gateway.corking")


class WriteBatch:
    """The connections of one event loop with writes held in the current iteration.

    One ``call_soon`` per iteration flushes them all, after the loop has handled every I/O
    event of its poll: the replies to a burst of requests leave back to back instead of one
    per callback, with the interpreter's work for the next request in between."""

    __slots__ = ("loop", "pending", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the batch is the value of its loop's entry in ``_batches``, which a strong
        # reference back to the key would keep alive forever.
        self.loop = weakref.ref(loop)
        self.pending: list[CorkedTransport] = []
        self.scheduled = False

    def add(self, corked: CorkedTransport) -> None:
        self.pending.append(corked)
        if not self.scheduled:
            loop = self.loop()
            if loop is None:  # pragma: no cover - a transport outliving its loop
                return
            self.scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        pending, self.pending = self.pending, []
        for corked in pending:
            try:
                corked.flush()
            except Exception:  # noqa: BLE001 - one connection's failure must not strand the rest
                log.exception("writing to a client or upstream connection failed; closing it")
                corked.transport.abort()


_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WriteBatch] = (
    weakref.WeakKeyDictionary()
)


def write_batch(loop: asyncio.AbstractEventLoop) -> WriteBatch:
    """The loop's ``WriteBatch`` (one per event loop: per worker process, per test)."""
    batch = _batches.get(loop)
    if batch is None:
        batch = _batches[loop] = WriteBatch(loop)
    return batch


class CorkedTransport:
    """The client's transport as the listener and its response cycles see it: what they write
    in one event-loop iteration leaves at its end, in one write (see ``WriteBatch``).

    The order of the bytes is kept as long as everything written to the connection goes
    through here (``close`` sends what is held first; ``flush`` before handing the raw
    transport to a tunnel).  More than ``FLUSH_BYTES`` held goes out at once, so an app that
    sends many chunks without yielding holds no more than that before the transport's own
    flow control takes over."""

    __slots__ = ("transport", "batch", "held", "size")

    FLUSH_BYTES = 256 * 1024
    JOIN_BYTES = 16 * 1024  # held pieces up to this size are joined into one bytes

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.batch = write_batch(loop)
        self.held: list[bytes] | None = None
        self.size = 0

    def write(self, data: bytes) -> None:
        held = self.held
        if held is None:
            self.held = [data]
            self.size = len(data)
            self.batch.add(self)
            return
        held.append(data)
        self.size += len(data)
        if self.size >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        held = self.held
        if held is None:
            return
        self.held = None
        transport = self.transport
        if transport.is_closing():
            return
        if len(held) == 1:
            transport.write(held[0])
        elif self.size <= self.JOIN_BYTES:
            transport.write(b"".join(held))
        else:
            # No copy of a large body just to glue the head on: the TLS layer encrypts the
            # pieces in turn and still sends once.
            transport.writelines(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)
