"""One keep-alive HTTP/1.1 connection to an upstream server, as an asyncio Protocol.

Theory of operation: the proxy writes a request head (and maybe a body) and then reads the
response as a head followed by body chunks.  Bytes arriving from the server go through a
``ResponseParser`` (sans-IO) and are queued here; the proxy drains the queue at the client's
pace.  When more than ``HIGH_WATER`` bytes are queued we pause reading the socket, so a slow
client holds back a fast upstream instead of filling our memory (the same flow control
uvicorn applies on the client side).

Failures are translated into ``gateway.errors`` types at this boundary, carrying whether the
request may have reached the server (``request_sent``) so the retry policy can decide.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable

from gateway.config import UpstreamServer
from gateway.corking import CorkedTransport
from gateway.errors import (
    GatewayError,
    UpstreamClosed,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateway.upstream.events import Interim, ProtocolError, ResponseEvent, ResponseHead, Upgraded
from gateway.upstream.parsers import ResponseParser

HIGH_WATER = 256 * 1024


class ConnectionState(enum.Enum):
    IDLE = "idle"  # in the pool, no request on it
    ACTIVE = "active"  # a request/response exchange is under way
    CLOSED = "closed"


class UpstreamConnection(asyncio.Protocol):
    def __init__(
        self,
        server: UpstreamServer,
        parser: ResponseParser,
        read_timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.server = server
        self.parser = parser
        self.read_timeout = read_timeout
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        # What this connection writes leaves once per loop iteration (``gateway.corking``).
        self.corked: CorkedTransport | None = None
        self.state = ConnectionState.IDLE
        self.idle_since = loop.time()
        self.requests = 0  # exchanges started on this connection; > 0 before one means reused

        # Response side.
        self._head: ResponseHead | None = None
        self._interim: deque[Interim] = deque()  # 1xx before the head, not yet relayed
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: GatewayError | None = None
        self._waiter: asyncio.Future[None] | None = None
        # Called instead of a waiter when the exchange moves on (``watch``: the express lane).
        self._watcher: Callable[[], None] | None = None
        self._reading_paused = False
        self._received = False  # any response byte in the current exchange
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # After a 101 to an upgrade: bytes that already belong to the tunnel (see ``detach``).
        self._tunnel_data: list[bytes] | None = None

        # Request side.
        self._bytes_written = 0
        self._request_complete = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self.transport = transport  # type: ignore[assignment]
        self.corked = CorkedTransport(self.transport, self.loop)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self._tunnel_data is not None:
            self._tunnel_data.append(data)  # switched protocols: not HTTP any more
            return
        self._received = True
        self._last_read = self.loop.time()
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            self.abort(
                UpstreamProtocolError(str(exc), server=self.server.address, request_sent=True)
            )
            return
        self._apply(events)

    def eof_received(self) -> bool | None:
        self._apply(self.parser.feed_eof())
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = ConnectionState.CLOSED
        self._cancel_timer()
        if self._error is None and not self._complete:
            self._apply(self.parser.feed_eof())
        if self._error is None and not self._complete:
            what = "reset" if exc else "closed"
            self._error = UpstreamClosed(
                f"upstream {self.server.address} {what} the connection",
                server=self.server.address,
                request_sent=self._bytes_written > 0,
            )
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- state -------------------------------------------------------------------------------
    @property
    def is_usable(self) -> bool:
        """Idle and still open: safe to start a request on."""
        return (
            self.state is ConnectionState.IDLE
            and self.transport is not None
            and not self.transport.is_closing()
        )

    @property
    def reusable(self) -> bool:
        """The exchange finished cleanly and both sides agreed to keep the connection."""
        return (
            self.state is ConnectionState.ACTIVE
            and self._complete
            and self._request_complete
            and self._error is None
            and self._head is not None
            and self._head.keep_alive
            and not self.parser.must_close
            and self.transport is not None
            and not self.transport.is_closing()
        )

    @property
    def request_sent(self) -> bool:
        return self._bytes_written > 0

    @property
    def failed(self) -> bool:
        """The exchange failed (closed, reset, timed out, unparsable)."""
        return self._error is not None

    @property
    def interim_pending(self) -> bool:
        """A 1xx arrived that nobody has taken yet."""
        return bool(self._interim)

    @property
    def response_received(self) -> bool:
        """Any byte of a response arrived during the current exchange."""
        return self._received

    def close(self) -> None:
        self.state = ConnectionState.CLOSED
        if self.corked is not None:
            self.corked.close()

    @property
    def head(self) -> ResponseHead | None:
        """The current exchange's response head, once received."""
        return self._head

    @property
    def switched(self) -> bool:
        """The server answered 101: the connection is a tunnel now, ready to ``detach``."""
        return self._tunnel_data is not None

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        """Hand the switched connection over as a plain transport (reading paused) plus the
        tunnel bytes already received; this object is done with it."""
        assert self._tunnel_data is not None and self.transport is not None
        if self.corked is not None:
            self.corked.flush()
            self.corked = None
        transport, self.transport = self.transport, None
        data = b"".join(self._tunnel_data)
        self._tunnel_data = None
        self.state = ConnectionState.CLOSED
        self._cancel_timer()
        return transport, data

    def abort(self, error: GatewayError) -> None:
        """Fail the current exchange with ``error`` and drop the connection."""
        if self._error is None:
            self._error = error
        self._wake()
        self.state = ConnectionState.CLOSED
        if self.transport is not None:
            self.transport.abort()

    # -- request side ------------------------------------------------------------------------
    def start(
        self, head: bytes, *, head_request: bool, has_body: bool, upgrade: bool = False
    ) -> None:
        """Begin an exchange by writing the request head (``upgrade``: a WebSocket handshake,
        which a 101 may answer; see ``detach``)."""
        assert self.transport is not None and self.state is ConnectionState.IDLE
        self.state = ConnectionState.ACTIVE
        self.requests += 1
        self.parser.start(head_request=head_request, upgrade=upgrade)
        self._head = None
        self._interim.clear()
        self._body.clear()
        self._buffered = 0
        self._complete = False
        self._error = None
        self._received = False
        self._bytes_written = 0
        self._request_complete = not has_body
        self._last_read = self.loop.time()
        self.write(head)

    def write(self, data: bytes) -> None:
        corked = self.corked
        if corked is None or corked.is_closing():
            raise self._error or UpstreamClosed(
                f"upstream {self.server.address} closed the connection",
                server=self.server.address,
                request_sent=self._bytes_written > 0,
            )
        corked.write(data)
        self._bytes_written += len(data)

    async def drain(self) -> None:
        if self._write_paused and self.state is not ConnectionState.CLOSED:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter
            self._drain_waiter = None
        if self._error is not None:
            raise self._error

    def finish_request(self) -> None:
        self._request_complete = True
        self._last_read = self.loop.time()  # read_timeout counts from the request's end

    # -- response side -----------------------------------------------------------------------
    async def receive_head(self) -> ResponseHead:
        while self._head is None:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self._head

    async def receive_interim_or_head(self) -> Interim | ResponseHead:
        """The next interim 1xx response (RFC 9110 §15.2) not taken yet or, when none is
        left, the final head: call until it returns a ``ResponseHead``."""
        while not self._interim and self._head is None:
            if self._error is not None:
                raise self._error
            await self._wait()
        if self._interim:
            return self._interim.popleft()
        assert self._head is not None
        return self._head

    async def receive_body(self) -> tuple[bytes, bool]:
        """The next body bytes (everything queued so far) and whether more will follow."""
        while not self._body and not self._complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        if self._error is not None and not self._complete:
            raise self._error
        body = self._body
        if len(body) == 1:
            data = body.popleft()
        else:
            data = b"".join(body)
            body.clear()
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data, not self._complete

    async def receive_all(self) -> bytes:
        """The rest of the body, once the response is complete (only for bounded bodies)."""
        while not self._complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self.take_body()

    def take_body(self) -> bytes:
        """Everything queued of the body now (all of it once ``response_complete``)."""
        data = b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    @property
    def response_complete(self) -> bool:
        return self._complete

    @property
    def buffered(self) -> int:
        """Bytes of body queued and not yet taken."""
        return self._buffered

    def _apply(self, events: list[ResponseEvent]) -> None:
        for event in events:
            if type(event) is bytes:
                self._body.append(event)
                self._buffered += len(event)
            elif isinstance(event, ResponseHead):
                self._head = event
            elif isinstance(event, Interim):
                self._interim.append(event)
            elif isinstance(event, Upgraded):
                self._tunnel_data = [event.data]
                self._cancel_timer()
                if self.transport is not None and not self._reading_paused:
                    self._reading_paused = True
                    self.transport.pause_reading()
            else:
                # The read timer stays armed: the next exchange on this pooled connection
                # (its deadline is never earlier) reuses it, and ``_on_timer`` moves it on, so
                # a busy connection arms about one timer per read_timeout, not one a request.
                self._complete = True
        if self._buffered > HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def watch(self, callback: Callable[[], None]) -> None:
        """Have ``callback`` called, instead of waking a coroutine, whenever the exchange moves
        on (head, body, end, error or read timeout): the express lane answers without a task
        (``gateway.express``).  ``unwatch`` hands the exchange back to the coroutines."""
        self._watcher = callback
        if self._timer is None:
            self._timer = self.loop.call_at(self._last_read + self.read_timeout, self._on_timer)

    def unwatch(self) -> None:
        self._watcher = None

    @property
    def watching(self) -> bool:
        return self._watcher is not None

    async def _wait(self) -> None:
        waiter = self._waiter = self.loop.create_future()
        if self._timer is None:
            self._timer = self.loop.call_at(self._last_read + self.read_timeout, self._on_timer)
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._watcher is not None:
            self._watcher()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_timer(self) -> None:
        # Nginx's proxy_read_timeout: the longest gap between two reads, not a total.
        self._timer = None
        if (self._waiter is None and self._watcher is None) or self._complete:
            return
        deadline = self._last_read + self.read_timeout
        if not self._request_complete and not self._write_paused:
            # Still waiting for the client's (streamed) body, not for the server: a slow
            # client is the listener's body_timeout (408), never a 504 blamed on the server.
            deadline = self.loop.time() + self.read_timeout
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._on_timer)
            return
        self.abort(
            UpstreamTimeout(
                f"upstream {self.server.address} sent nothing for {self.read_timeout:g} s",
                server=self.server.address,
                request_sent=True,
            )
        )

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
