"""The HTTP/2 connection: h2's state machine on an asyncio transport, one ASGI task per stream.

Theory of operation.  ``H2Protocol`` feeds every byte the client sends to an
``h2.connection.H2Connection`` and acts on the events it returns; whatever h2 wants to send is
written once per read, or once per event-loop iteration for the app's messages (so the
responses of ten streams finishing together leave in one TLS write).  Each request becomes a
``Stream``: its scope is the one the HTTP/1.1 listener builds (``gateway/http2/request.py``),
and it runs through the same ASGI app, ``GatewayApp``, with the stream's ``receive`` and
``send``.  h2 parses what the client sends and frames the control frames; a final
response's HEADERS and DATA frames are built here (``H2Protocol.send_headers`` and
``send_data``, with h2's state and windows moved as its own would), one copy of the payload
instead of five, each full DATA frame one full TLS record, and a big body written in pieces
of ``FLUSH_BYTES`` rather than one buffer; small answers are joined into one write.  HPACK
fields and request header blocks that repeat are remembered while the dynamic table holds
(``encoder.py``, ``decoder.py``).  A fresh cache hit the app has published
(``gateway.cache.hot``) is answered without a ``Stream`` at all, in the read that brought its
request (``_answer_hot``); a proxied GET or HEAD whose stream ended with its headers may take
the express lane (``gateway.express``): no task, answered from the upstream's callbacks.

Flow control is back-pressure, both ways:

- request bodies: a stream may have at most ``stream_window`` bytes (a connection
  ``connection_window``) sent and not yet read by the app; the window is re-opened
  (WINDOW_UPDATE) only as ``receive`` hands the bytes to the app, that is as the proxy
  buffers them or writes them upstream;
- responses: ``send`` returns only once its body has been handed to h2 within the client's
  window and the transport is not over its high-water mark, so a slow reader makes the proxy
  stop reading from the upstream instead of the gateway buffering the response.

Limits (see ``limits.py`` for rapid reset): SETTINGS_MAX_CONCURRENT_STREAMS, the header list
size (HPACK decoding stops at ``max_header_bytes``: a connection error, as is h2's bound of 64
CONTINUATION frames), an idle timeout (no open stream), a header timeout (a header block left
unfinished).  Graceful shutdown sends GOAWAY with the last stream id taken: those streams
finish, later ones are refused (REFUSED_STREAM, safe for the client to retry), and the
connection closes when the last one is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

try:  # the state machines' inputs, for framing DATA ourselves (H2Protocol.send_data)
    from h2.connection import ConnectionInputs
    from h2.stream import StreamInputs
except ImportError:  # pragma: no cover - another h2: its own send_data frames the body
    ConnectionInputs = StreamInputs = None  # type: ignore[assignment,misc]

from gateway.asgi import INTERIM, INTERIM_SCOPE_KEY, Message
from gateway.errors import RequestTimeout, error_response
from gateway.http2.decoder import make_decoder
from gateway.http2.encoder import make_encoder
from gateway.http2.limits import Http2Limits, ResetBudget
from gateway.http2.request import MalformedRequest, request_scope, response_headers
from gateway.tracing import TRACE_SCOPE_KEY, Trace, connection_text

log = logging.getLogger("gateway.http2")

_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    # request.py validates and normalises in the pass that builds the scope, and makes a
    # malformed request the stream error RFC 9113 asks for (h2 would end the connection).
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)
_DISCONNECT: Message = {"type": "http.disconnect"}
HARD_STREAM_FACTOR = 2
# A connection's frames are written once per loop iteration, but not more than this much body
# at a time: ten streams' 64 KiB answers in one buffer would be a 640 KiB bytes object, above
# glibc's mmap threshold (gateway.memory), so a fresh mapping and a page fault per 4 KiB for
# each of the copies on the way (h2's buffer, its bytes, the TLS records).
FLUSH_BYTES = 64 * 1024
# Up to this much, what a flush writes is joined first: one TLS record for the HEADERS and
# DATA of many small answers, not two each.
JOIN_BYTES = 16 * 1024
# A frame's header: 24-bit length (high byte, low 16 bits), type, flags, stream id.
_FRAME_HEADER = struct.Struct(">BHBBL")
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4
# A full DATA frame, header included, is one full TLS record (16 KiB of plaintext): a
# 16 KiB payload would put its last 9 bytes in a record of their own.
RECORD_PAYLOAD = 16384 - _FRAME_HEADER.size


class _Settings(h2.settings.Settings):
    """Our SETTINGS as sent, with h2's own check of inbound streams set higher.

    h2 makes a stream over SETTINGS_MAX_CONCURRENT_STREAMS a connection error; RFC 9113
    §5.1.2 asks for a stream error (a client may open streams before it has our SETTINGS).
    So ``_request`` refuses the stream over the limit with REFUSED_STREAM, and h2's check
    only ends the connection of a client that goes on far past it (``hard_cap``)."""

    def __init__(self, hard_cap: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.hard_cap = hard_cap

    @property  # type: ignore[misc]
    def max_concurrent_streams(self) -> int:
        return self.hard_cap


class Stream:
    """One request/response exchange: the ASGI ``receive`` and ``send`` of its task."""

    __slots__ = (
        "protocol",
        "stream_id",
        "scope",
        "chunks",
        "ended",
        "body_done",
        "disconnected",
        "started",
        "response_started",
        "response_complete",
        "pending_head",
        "readable",
        "writable",
    )

    def __init__(self, protocol: H2Protocol, stream_id: int, scope: Any, ended: bool) -> None:
        self.protocol = protocol
        self.stream_id = stream_id
        self.scope = scope
        self.chunks: list[tuple[bytes, int]] = []  # (data, flow-controlled length)
        self.ended = ended  # the client sent END_STREAM
        self.body_done = False  # the app has had the last http.request message
        self.disconnected = False  # reset by either side, or the connection is gone
        self.started = False  # the app task exists
        self.response_started = False
        self.response_complete = False
        self.pending_head: list[tuple[bytes, bytes]] | None = None
        self.readable = asyncio.Event()
        self.writable = asyncio.Event()

    def feed(self, data: bytes, flow_length: int) -> None:
        self.chunks.append((data, flow_length))
        self.readable.set()

    def end(self) -> None:
        self.ended = True
        self.readable.set()

    def gone(self) -> None:
        self.disconnected = True
        self.readable.set()
        self.writable.set()

    async def receive(self) -> Message:
        while True:
            chunks = self.chunks
            if chunks:
                data = chunks[0][0] if len(chunks) == 1 else b"".join(c[0] for c in chunks)
                consumed = sum(c[1] for c in chunks)
                self.chunks = []
                self.protocol.consumed(self.stream_id, consumed)
                self.body_done = self.ended
                return {"type": "http.request", "body": data, "more_body": not self.ended}
            if self.ended and not self.body_done:
                self.body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self.disconnected or self.response_complete:
                return _DISCONNECT
            self.readable.clear()
            if self.ended:  # the body is done: only waiting for a disconnect
                await self.readable.wait()
                continue
            # The app waits for body bytes and the window is open: the client's turn.
            try:
                async with asyncio.timeout(self.protocol.limits.body_timeout):
                    await self.readable.wait()
            except TimeoutError:
                self.protocol.body_timed_out(self)

    async def send(self, message: Message) -> None:
        if self.disconnected or self.response_complete:
            return  # like uvicorn: the app learns of it from receive()
        kind = message["type"]
        protocol = self.protocol
        if kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("http.response.start sent twice")
            self.response_started = True
            # Held until the first body message, so a bodiless response is one HEADERS frame.
            self.pending_head = response_headers(message["status"], message.get("headers", []))
            return
        if kind == INTERIM:
            # 103 Early Hints and the like: a HEADERS frame of its own, before the response.
            if not self.response_started:
                hints = response_headers(message["status"], message.get("headers", []))
                protocol.conn.send_headers(self.stream_id, hints)
                protocol.schedule_flush()
            return
        if kind != "http.response.body":
            return  # nothing else (WebSocket, trailers) is offered on HTTP/2
        if not self.response_started:
            raise RuntimeError("http.response.body before http.response.start")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        conn = protocol.conn
        head = self.pending_head
        try:
            if head is not None:
                self.pending_head = None
                protocol.send_headers(self.stream_id, head, not body and not more)
            if body:
                await self._send_data(body, not more)
            elif not more and head is None:
                conn.end_stream(self.stream_id)
        except h2.exceptions.StreamClosedError:
            # Reset in a frame not yet read, or by h2 itself: the same as a reset we saw.
            self.gone()
            return
        if not more and not self.disconnected:
            self.response_complete = True
            self.readable.set()  # a receive() waiting for a disconnect returns now
        protocol.schedule_flush()

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The express lane's answer (``gateway.express``): a whole response at once, which
        ``H2Protocol.express_blocked`` made sure fits the client's windows.  It ends the
        stream's turn on the lane (``H2Protocol.express_done``)."""
        if self.response_complete:
            return
        self.response_started = True
        protocol = self.protocol
        if not self.disconnected:
            head = response_headers(status, headers)
            try:
                protocol.send_headers(self.stream_id, head, not body)
                protocol.send_body(self.stream_id, body)
            except h2.exceptions.StreamClosedError:
                self.gone()  # reset in a frame not yet read, or by h2 itself
            else:
                self.response_complete = True
            protocol.schedule_flush()
        protocol.express_done(self)

    async def _send_data(self, body: bytes, end: bool) -> None:
        protocol = self.protocol
        conn = protocol.conn
        stream_id = self.stream_id
        total = len(body)
        view: memoryview | None = None
        sent = 0
        while True:
            if protocol.write_paused:
                await protocol.drain()
            if self.disconnected:
                return
            size = min(
                conn.local_flow_control_window(stream_id),
                conn.max_outbound_frame_size,
                RECORD_PAYLOAD,
                total - sent,
            )
            if size <= 0:
                # The client's window is shut: wait for its WINDOW_UPDATE (or a reset).
                protocol.schedule_flush()
                self.writable.clear()
                protocol.blocked.add(self)
                try:
                    await self.writable.wait()
                finally:
                    protocol.blocked.discard(self)
                continue
            if size == total:
                chunk: bytes | memoryview = body  # the common case: one frame, no copy
            else:
                if view is None:
                    view = memoryview(body)
                chunk = view[sent : sent + size]
            sent += size
            protocol.send_data(stream_id, chunk, end and sent == total)
            protocol.unflushed += size
            if protocol.unflushed >= FLUSH_BYTES:
                protocol._flush()
            if sent == total:
                return
            protocol.schedule_flush()


class H2Protocol(asyncio.Protocol):
    """An HTTP/2 server connection running ``app`` (see the module docstring)."""

    def __init__(
        self,
        app: Any,
        limits: Http2Limits,
        server_state: Any,
        app_state: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        server: tuple[str, int] | None = None,
        client: tuple[str, int] | None = None,
        root_path: str = "",
        sni: str | None = None,
        cert_names: tuple[str, ...] | None = None,
    ) -> None:
        self.app = app
        self.limits = limits
        self.server_state = server_state
        self.app_state = app_state
        self.loop = loop
        self.base_scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "2",
            "server": server,
            "client": client,
            "scheme": "https",
            "root_path": root_path,
            INTERIM_SCOPE_KEY: True,  # 1xx responses are fine for any HTTP/2 client
        }
        if sni is not None:
            self.base_scope["gateway.sni"] = sni
            self.base_scope["gateway.cert_names"] = cert_names
        self.conn = h2.connection.H2Connection(config=_CONFIG)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        # Streams taken and not finished, reset or not: their apps run, or will at the end of
        # this read (limits.py, defence 2; and SETTINGS_MAX_CONCURRENT_STREAMS, see _Settings).
        self.running = 0
        self.blocked: set[Stream] = set()  # streams waiting for the client's window
        self.budget = ResetBudget(limits.reset_burst, limits.reset_rate)
        self.write_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.flush_scheduled = False
        self.out: list[bytes] = []  # frames to write before what h2 holds (send_data)
        self.unflushed = 0  # DATA payload bytes queued since the last flush
        self.closed = False
        self.goaway_last: int | None = None  # set once we said GOAWAY (graceful shutdown)
        self.client_left = False  # the client said GOAWAY
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_deadline = 0.0  # when an idle connection is closed (see _arm_idle)
        self.header_timer: asyncio.TimerHandle | None = None
        # Trace mode (gateway.tracing): the TLS facts, when the connection came, streams so far.
        self.trace_connection: tuple[str, float] | None = None
        self.traced_streams = 0

    def start_tracing(self, ssl_object: Any) -> None:
        self.trace_connection = (connection_text(0, ssl_object, None), time.perf_counter())

    def _start_trace(self, scope: dict[str, Any], stream_id: int) -> Trace:
        assert self.trace_connection is not None
        text, accepted = self.trace_connection
        before = self.traced_streams
        self.traced_streams = before + 1
        trace = Trace(accepted) if before == 0 else Trace()
        client = scope.get("client")
        peer = f", client {client[0]}:{client[1]}" if client else ""
        if before == 0:
            trace.add("gateway.http2.protocol", f"{text.rsplit(', client', 1)[0]}{peer}", accepted)
        else:
            trace.add("gateway.http2.protocol", f"connection reused: stream #{before + 1} on it")
        target = scope["raw_path"] + (
            b"?" + scope["query_string"] if scope["query_string"] else b""
        )
        fields = len(scope["headers"])
        trace.add(
            "gateway.http2.protocol",
            f"head parsed: {scope['method']} {target.decode('latin-1')} HTTP/2 (stream"
            f" {stream_id}), {fields} header fields",
        )
        return trace

    # --- asyncio protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but behaves as one.
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)
        limits, conn = self.limits, self.conn
        codes = h2.settings.SettingCodes
        conn.local_settings = _Settings(
            limits.max_concurrent_streams * HARD_STREAM_FACTOR,
            client=False,
            initial_values={
                codes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                codes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
                codes.INITIAL_WINDOW_SIZE: limits.stream_window,
            },
        )
        # In force from the first frame, not only once the client acknowledges the SETTINGS.
        conn.decoder = make_decoder()
        conn.decoder.max_header_list_size = limits.max_header_bytes
        conn.encoder = make_encoder()
        conn.initiate_connection()
        conn.increment_flow_control_window(limits.connection_window - 65535)
        self._flush()
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued the GOAWAY with the right error code; send it and close.
            log.info("%s: HTTP/2 connection error: %s", self._peer(), exc)
            self._close()
            return
        new: list[Stream] = []
        opened = False
        for event in events:
            kind = type(event)
            if kind is h2.events.RequestReceived:
                opened = True
                stream = self._request(event)  # type: ignore[arg-type]
                if stream is not None:
                    new.append(stream)
            elif kind is h2.events.DataReceived:
                self._data(event)  # type: ignore[arg-type]
            elif kind is h2.events.StreamEnded:
                found = self.streams.get(event.stream_id)  # type: ignore[attr-defined]
                if found is not None:
                    found.end()
            elif kind is h2.events.StreamReset:
                self._reset_by_client(event.stream_id)  # type: ignore[attr-defined]
                if self.closed:
                    return
            elif kind is h2.events.WindowUpdated:
                self._window_opened(event.stream_id)  # type: ignore[attr-defined]
            elif kind is h2.events.RemoteSettingsChanged:
                if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:  # type: ignore[attr-defined]
                    self._window_opened(0)
            elif kind is h2.events.ConnectionTerminated:
                self.client_left = True
            # Trailers, PING, SETTINGS acks and priorities need nothing from us (h2 answers
            # PING and SETTINGS itself); request trailers are dropped (the HTTP/1.1 upstream
            # request is sent chunked without them).
        for stream in new:
            # Opened and reset within this read: the app never runs (rapid reset, defence 1).
            if not stream.disconnected:
                self._start(stream)
        if opened and self.goaway_last is None and getattr(self.server_state, "draining", False):
            # Accepted as the listener began to drain (gateway.listener.ListenerState): uvicorn
            # did not ask it to finish.  The streams it came with are answered, then GOAWAY.
            self.shutdown()
        self._check_header_block()
        self._flush()
        if (self.client_left or self.goaway_last is not None) and not self.streams:
            self._close()
        elif not self.streams:
            self._arm_idle()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server_state.connections.discard(self)
        self._cancel_timers()
        for stream in self.streams.values():
            stream.gone()
        self._release_drain()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._release_drain()

    # --- called by uvicorn -----------------------------------------------------------------

    def shutdown(self) -> None:
        """Graceful shutdown: GOAWAY naming the last stream we took; those streams finish."""
        if self.closed or self.goaway_last is not None:
            return
        self.goaway_last = self.conn.highest_inbound_stream_id
        self._flush()  # h2's queued frames go first
        assert self.transport is not None
        # Written by hand: h2's close_connection would also forbid sending on open streams.
        frame = GoAwayFrame(0, last_stream_id=self.goaway_last, error_code=ErrorCodes.NO_ERROR)
        self.transport.write(frame.serialize())
        if not self.streams:
            self._close()

    # --- called by streams -----------------------------------------------------------------

    def consumed(self, stream_id: int, size: int) -> None:
        """The app has read ``size`` bytes of request body: let the client send more."""
        if size and not self.closed:
            self.conn.acknowledge_received_data(size, stream_id)
            self.schedule_flush()

    def body_timed_out(self, stream: Stream) -> None:
        """``body_timeout`` without a request-body byte: 408 on this stream, as HTTP/1.1
        answers it (the other streams go on); the app sees a disconnect."""
        if stream.disconnected or self.closed:
            return
        stream_id = stream.stream_id
        message = f"no request body bytes for {self.limits.body_timeout:g} s"
        log.info("%s: stream %d: %s", self._peer(), stream_id, message)
        stream.scope["gateway.closed_status"] = RequestTimeout.status
        conn = self.conn
        code = ErrorCodes.CANCEL
        if not stream.response_started:
            headers, body = error_response(RequestTimeout.status, message)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                if conn.local_flow_control_window(stream_id) >= len(body):
                    conn.send_headers(stream_id, response_headers(408, headers))
                    conn.send_data(stream_id, body, end_stream=True)
                    code = ErrorCodes.NO_ERROR  # answered; "stop sending" (RFC 9113 §8.1)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            conn.reset_stream(stream_id, code)
        stream.gone()
        self.schedule_flush()

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    async def drain(self) -> None:
        if self.write_paused and not self.closed:
            waiter = self.loop.create_future()
            self.drain_waiters.append(waiter)
            await waiter

    # --- events ----------------------------------------------------------------------------

    def _request(self, event: h2.events.RequestReceived) -> Stream | None:
        stream_id = event.stream_id
        assert stream_id is not None
        conn = self.conn
        refused = self.goaway_last is not None and stream_id > self.goaway_last
        if refused or self.running >= self.limits.max_concurrent_streams:
            # Not processed at all, so the client may safely retry it (RFC 9113 §8.7).
            conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return None
        try:
            scope = request_scope(event.headers, event.stream_ended is not None, self.base_scope)
        except MalformedRequest as exc:
            log.info("%s: stream %d refused: %s", self._peer(), stream_id, exc)
            conn.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return None
        if event.stream_ended is not None and self._answer_hot(stream_id, scope):
            return None
        scope["state"] = self.app_state.copy()
        if self.trace_connection is not None:
            scope[TRACE_SCOPE_KEY] = self._start_trace(scope, stream_id)
        stream = Stream(self, stream_id, scope, event.stream_ended is not None)
        self.streams[stream_id] = stream
        self.running += 1
        return stream  # the idle timer stays: it finds the stream (see _idle)

    def _answer_hot(self, stream_id: int, scope: dict[str, Any]) -> bool:
        """Answer a bodiless GET or HEAD from the app's hot hits (``gateway.cache.hot``) with
        no Stream, task or app call, the body sent at once within the client's windows; False
        when the request takes the full path."""
        hot = getattr(getattr(self.app, "current", None), "hot", None)
        if hot is None or not hot.entries or self.write_paused or self.trace_connection:
            return False
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            return False
        conn = self.conn
        query = scope["query_string"]
        target = scope["raw_path"] + b"?" + query if query else scope["raw_path"]
        try:
            answer = hot.serve_fields(
                scope.get("gateway.sni"),
                scope.get("gateway.cert_names"),
                target,
                scope["headers"],
                scope["client"],
                time.perf_counter(),
                method=method,
                max_body=conn.local_flow_control_window(stream_id),
            )
        except Exception:
            hot.fail()  # never a failed request: the full path answers from now on
            return False
        if answer is None:
            return False
        status, fields, body = answer  # the idle wait starts again after this read
        self.send_headers(stream_id, response_headers(status, fields), not body)
        self.send_body(stream_id, body)
        return True

    def send_body(self, stream_id: int, body: bytes) -> None:
        """A whole body at once, ending the stream, in frames of one full TLS record each;
        the caller made sure it fits the client's windows (``local_flow_control_window``)."""
        total = len(body)
        step = min(self.conn.max_outbound_frame_size, RECORD_PAYLOAD)
        view = memoryview(body) if total > step else None  # one frame: no view, no copy
        sent = 0
        while sent < total:
            size = min(step, total - sent)
            chunk = body if view is None else view[sent : sent + size]
            sent += size
            self.send_data(stream_id, chunk, sent == total)
            self.unflushed += size
            if self.unflushed >= FLUSH_BYTES:
                self._flush()

    def _data(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        assert stream_id is not None
        stream = self.streams.get(stream_id)
        if stream is None or stream.disconnected or stream.body_done:
            # Nobody will read it: give the window back at once.
            self.conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
            return
        stream.feed(event.data or b"", event.flow_controlled_length or 0)

    def _reset_by_client(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not stream.response_complete and not self.budget.spend():
            log.warning(
                "%s: too many streams reset by the client (rapid reset); closing", self._peer()
            )
            self.conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, b"too many stream resets")
            self._close()
            return
        stream.gone()
        if stream.started:
            return  # the task ends when the app notices; it is removed then
        # Never started (opened in this same read): its slot is free again at once.
        self.streams.pop(stream_id, None)
        self.running -= 1

    def _window_opened(self, stream_id: int) -> None:
        if stream_id == 0:
            for stream in self.blocked:
                stream.writable.set()
            return
        found = self.streams.get(stream_id)
        if found is not None:
            found.writable.set()

    # --- streams' tasks --------------------------------------------------------------------

    def _start(self, stream: Stream) -> None:
        stream.started = True
        if stream.ended:
            express = getattr(getattr(self.app, "current", None), "express", None)
            if express is not None:
                try:
                    if express.start(stream, self, self.app):
                        return
                except Exception:  # noqa: BLE001 - never a failed request: the full path answers
                    express.fail()
        self.start_full_path(stream, self.app)

    # The express lane's side of the connection (``gateway.express``; the HTTP/1.1
    # listener has the same three methods): a proxied GET or HEAD whose stream ended with
    # its headers is written upstream from ``_start`` and answered from the upstream's
    # callbacks through ``Stream.respond``, with no task; it counts as running until then.

    def start_full_path(self, stream: Stream, app: Any) -> None:
        """The stream's task, from the start or for a request the express lane hands back."""
        task = self.loop.create_task(self._run(stream))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def express_blocked(self, stream: Stream, size: int) -> bool:
        """Whether a response of ``size`` body bytes must take the full path, which waits for
        the client's WINDOW_UPDATE or for the transport to drain."""
        return self.write_paused or size > self.conn.local_flow_control_window(stream.stream_id)

    def abort_response(self, stream: Stream) -> None:
        """The express lane failed mid-response: the stream is reset (``_finished``)."""
        self.express_done(stream)

    def express_done(self, stream: Stream) -> None:
        """The express lane is done with ``stream``: what the end of its task would do."""
        if self.streams.get(stream.stream_id) is not stream:
            return  # done already
        self.running -= 1
        self._finished(stream)

    async def _run(self, stream: Stream) -> None:
        try:
            await self.app(stream.scope, stream.receive, stream.send)
        except Exception:
            log.exception("%s: stream %d: the app failed", self._peer(), stream.stream_id)
        finally:
            self.running -= 1
            self._finished(stream)

    def _finished(self, stream: Stream) -> None:
        stream_id = stream.stream_id
        self.streams.pop(stream_id, None)
        if self.closed:
            return
        if not stream.disconnected:
            # The app gave up mid-response (or never answered): the client must not take a
            # truncated body for a whole one.  Answered before the whole request body came:
            # "stop sending" (RFC 9113 §8.1).
            code = None
            if not stream.response_complete:
                code = ErrorCodes.INTERNAL_ERROR
            elif not stream.ended:
                code = ErrorCodes.NO_ERROR
            if code is not None:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.conn.reset_stream(stream_id, code)
                self.schedule_flush()
        if self.streams:
            return
        if self.goaway_last is not None or self.client_left:
            self._flush()
            self._close()
        else:
            self._arm_idle()

    # --- timers and closing ----------------------------------------------------------------

    def _arm_idle(self) -> None:
        """The idle wait starts (again) now.  Lazily, as the HTTP/1.1 listener's timer: the
        armed handle stays where it is, and one that fires before the deadline sleeps again
        until it, so a busy connection moves a number, not a timer, per read."""
        if self.closed:
            return
        self.idle_deadline = deadline = self.loop.time() + self.limits.idle_timeout
        if self.idle_timer is None:
            self.idle_timer = self.loop.call_at(deadline, self._idle)

    def _idle(self) -> None:
        self.idle_timer = None
        if self.streams or self.closed:
            return  # busy: the wait starts again when its last stream ends (_arm_idle)
        if self.loop.time() < self.idle_deadline:  # a read since it was armed
            self.idle_timer = self.loop.call_at(self.idle_deadline, self._idle)
            return
        self.conn.close_connection(ErrorCodes.NO_ERROR, b"idle")
        self._close()

    def _check_header_block(self) -> None:
        # h2 keeps a HEADERS frame without END_HEADERS, and its CONTINUATIONs, in the read
        # buffer until the block is complete: that is a request head in progress.
        pending = bool(getattr(self.conn.incoming_buffer, "_headers_buffer", None))
        if pending and self.header_timer is None:
            self.header_timer = self.loop.call_later(
                self.limits.header_timeout, self._header_timeout
            )
        elif not pending and self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.closed:
            return
        log.info("%s: request head not complete within the header timeout", self._peer())
        self.conn.close_connection(ErrorCodes.PROTOCOL_ERROR, b"header timeout")
        self._close()

    def _cancel_timers(self) -> None:
        for timer in (self.idle_timer, self.header_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.header_timer = None

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        """A final response's HEADERS (and CONTINUATION) frames: h2's ``send_headers`` without
        the work that buys this server nothing.

        h2 builds the block through its validation flags, a UTF-8 pass, frame objects, flag
        sets and a serialisation: 12% of an HTTP/2 request's CPU, besides the HPACK encoding
        itself (bench/README.md, "Session 9").  Here the state machines move as in h2's own
        (and raise as they would: ``StreamClosedError`` for a stream reset meanwhile), before
        the block is encoded, since encoding changes the HPACK context for good; the block is
        encoded by the connection's encoder and framed in one bytes object, after whatever h2
        has queued (so the blocks reach the client in the order they were encoded).  Headers
        here are the gateway's own response fields, already lower-case and valid
        (``request.response_headers``), which is why h2's outbound checks are off anyway.
        A 1xx response, or a stream h2 does not know, takes h2's own path."""
        conn = self.conn
        stream = conn.streams.get(stream_id)
        if StreamInputs is None or stream is None or headers[0][1][:1] == b"1":
            conn.send_headers(stream_id, headers, end_stream=end)
            return
        conn.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_HEADERS)
        block: bytes = conn.encoder.encode(headers)
        if end:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        queued = conn.data_to_send()
        out = self.out
        if queued:
            out.append(queued)
        pack = _FRAME_HEADER.pack
        flags = _END_STREAM if end else 0
        step: int = stream.max_outbound_frame_size or conn.max_outbound_frame_size
        size = len(block)
        if size <= step:
            out.append(
                b"".join(
                    (
                        pack(size >> 16, size & 0xFFFF, _HEADERS, flags | _END_HEADERS, stream_id),
                        block,
                    )
                )
            )
            return
        pieces: list[bytes] = []
        kind = _HEADERS
        for start in range(0, size, step):
            piece = block[start : start + step]
            length = len(piece)
            if start + step >= size:
                flags |= _END_HEADERS
            pieces.append(pack(length >> 16, length & 0xFFFF, kind, flags, stream_id))
            pieces.append(piece)
            kind, flags = _CONTINUATION, 0
        out.append(b"".join(pieces))

    def send_data(self, stream_id: int, data: bytes | memoryview, end: bool) -> None:
        """One DATA frame of a response: h2's ``H2Connection.send_data`` without its framing.

        h2's state machines and windows move exactly as in its own ``send_data`` (and raise
        as it would: a stream reset meanwhile is ``StreamClosedError``); the frame is built
        here in one bytes object, one copy of the payload where h2 makes five (``tobytes``,
        ``serialize``, a join, its buffer, ``data_to_send``: 68 of a 64 KiB response's
        300 µs).  The caller keeps ``data`` within both windows and the frame size."""
        conn = self.conn
        if StreamInputs is None:  # pragma: no cover - see the import
            conn.send_data(stream_id, data, end_stream=end)
            return
        size = len(data)
        conn.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream = conn.streams[stream_id]
        stream.state_machine.process_input(StreamInputs.SEND_DATA)
        if end:
            stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
        stream.outbound_flow_control_window -= size
        conn.outbound_flow_control_window -= size
        queued = conn.data_to_send()  # h2's frames so far (this stream's HEADERS) go first
        out = self.out
        if queued:
            out.append(queued)
        header = _FRAME_HEADER.pack(
            size >> 16, size & 0xFFFF, _DATA, _END_STREAM if end else 0, stream_id
        )
        out.append(b"".join((header, data)))

    def _flush(self) -> None:
        self.flush_scheduled = False
        self.unflushed = 0
        data = self.conn.data_to_send()
        out = self.out
        if out:
            self.out = []
            if data:
                out.append(data)
            if self.closed or self.transport is None:
                return
            if sum(map(len, out)) <= JOIN_BYTES:
                self.transport.write(b"".join(out))  # small answers share TLS records
            else:
                self.transport.writelines(out)  # one TLS record per full DATA frame
        elif data and not self.closed and self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        if self.closed:
            return
        self._flush()
        self.closed = True
        self._cancel_timers()
        for stream in self.streams.values():
            stream.gone()
        self._release_drain()
        if self.transport is not None:
            self.transport.close()

    def _release_drain(self) -> None:
        waiters, self.drain_waiters = self.drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _peer(self) -> str:
        client = self.base_scope["client"]
        return f"{client[0]}:{client[1]}" if client else "client"
