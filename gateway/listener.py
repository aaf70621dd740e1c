"""uvicorn's HTTP/1.1 protocol, adjusted for a proxy.

The changes, all on the httptools implementation (uvicorn's default when installed); the
response itself is written by ``gateway.http1_cycle.GatewayCycle``, which each request's
cycle is.  uvicorn's per-request parser callbacks are inlined here rather than extended
through ``super()`` (they run for every request: bench/README.md, "Session 6"), so a new
uvicorn release is checked against them first (pyproject.toml pins its minor version).

- Keep the raw request target.  uvicorn reduces an absolute-form target
  (``GET http://host/path``) to its path, but RFC 9112 §3.2.2 says that target's authority,
  not Host, names the resource.  We keep it in the scope (``gateway.target``) so
  ``validation.check_request`` can refuse hosts we do not serve instead of proxying them.
- Bound the request head.  llhttp has no limit of its own; a head over ``max_header_bytes``
  is answered 431 (RFC 6585 §5) and the connection closed, before anything is buffered
  further.  Parse errors are answered with the gateway's JSON error body, not uvicorn's text.
- Write once per connection per event-loop iteration.  uvicorn writes the head and each body
  chunk separately; over TLS each write is its own record and ``send()``.  Everything the
  listener and its cycles write goes through a ``CorkedTransport``, which holds it until the
  loop has handled all the I/O events of its poll (``gateway.corking.WriteBatch``): one
  write per connection, and the replies to a burst of requests back to back.

- Relay interim responses.  A ``gateway.response.interim`` message (``asgi.INTERIM``, e.g. the
  upstream's 103 Early Hints) sent before the response starts is written as a 1xx head at
  once (``GatewayCycle``); the scope says so (``gateway.interim``) only to HTTP/1.1 clients,
  as RFC 9110 §15.2 forbids 1xx to HTTP/1.0 ones.

- Hand a WebSocket upgrade over.  llhttp stops at the end of an upgrade request's head and
  says where (``HttpParserUpgrade``'s offset); the bytes after it belong to the new protocol.
  For ``Upgrade: websocket`` the scope gets an ``UpgradeHandle`` (``gateway.upgrade``) with
  which the WebSocket handler takes the raw transport and those bytes for its tunnel.  Any
  request that asked to upgrade is answered as plain HTTP otherwise, and its connection is
  closed afterwards: what follows its head is not HTTP we could parse (h2c is never tunnelled).

- Hold a client to its limits (``gateway.client_limits``, Nginx's names): ``header_timeout``
  and ``body_timeout``, with uvicorn's keep-alive wait, on one timer per connection, re-armed
  lazily (no per-byte or per-request timer work),
  ``max_connections``, ``keepalive_requests``, an 8 KiB request target (414) and 100 header
  fields (431).  Trailer fields of a chunked request are dropped, whatever the timing (llhttp
  reports them through ``on_header`` like header fields).  An HTTP/1.0 client never gets a
  chunked response (``GatewayCycle``).  The SNI name of the TLS handshake is put in the scope
  (``gateway.sni``) for ``validation``.
- Answer hot cache hits itself.  A plain GET or HEAD whose fresh hit the app has published
  (``gateway.cache.hot``) is answered from ``on_headers_complete``, before a scope, a cycle
  or a task is built; anything else, or a client above the write high-water mark, takes
  the full path.
- Take proxied requests on the express lane.  Where uvicorn would start a request's task
  (``_start_asgi_task``, also for a pipelined one), a bodiless GET or HEAD to a proxy route
  is offered to the app's ``gateway.express`` lane first, which forwards it and answers from
  the upstream connection's callback; uvicorn's task starts only for what the lane leaves or
  hands back.  The start is held until the cycle is ours (``GatewayCycle``), see
  ``on_headers_complete``.
- Answer a good request before refusing what follows it.  When the bytes after a complete
  request are not HTTP, the request in progress is answered first, then the 400 (Nginx does
  the same), instead of dropping a valid request with the garbage after it.

With h11 (httptools not installed) the scope already carries the full target in ``raw_path``
and h11 enforces its own head limit; WebSocket upgrades need httptools.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections import deque
from dataclasses import replace
from typing import Any

from uvicorn.server import ServerState

from gateway.asgi import INTERIM_SCOPE_KEY
from gateway.cache.hot import HotHits
from gateway.client_limits import ClientLimits, Phase, body_deadline, is_last_request
from gateway.corking import CorkedTransport
from gateway.errors import (
    CONNECT_REFUSED,
    MalformedRequest,
    NotImplementedMethod,
    RequestRejected,
    RequestTimeout,
    TooManyConnections,
    parse_error,
    raw_error_response,
)
from gateway.express import ExpressLane
from gateway.http1_cycle import GatewayCycle
from gateway.http2.limits import Http2Limits
from gateway.tracing import TRACE_SCOPE_KEY, Trace, connection_text, head_text

try:
    import httptools
    from uvicorn.protocols.http.flow_control import FlowControl, service_unavailable
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools not installed
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


def transport_addresses(
    transport: asyncio.BaseTransport,
) -> tuple[tuple[str, int | None] | None, tuple[str, int] | None]:
    """The scope's ``server`` and ``client``, as uvicorn's ``get_local_addr`` and
    ``get_remote_addr`` make them, but from the transport's ``sockname`` and ``peername``
    rather than its socket: the HTTPS listener's transport knows both from the accept, so a
    connection costs no ``getsockname`` and ``getpeername``."""
    local = transport.get_extra_info("sockname")
    if isinstance(local, tuple):
        server: tuple[str, int | None] | None = (str(local[0]), int(local[1]))
    else:
        server = (local, None) if isinstance(local, str) else None
    peer = transport.get_extra_info("peername")
    client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
    return server, client


class ListenerState(ServerState):
    """uvicorn's state shared by a listener's connections, plus whether the listener is
    draining (graceful shutdown or a reload that moved its port).  uvicorn asks the
    connections it knows to finish when it stops accepting, but a TLS connection joins them
    only once its handshake is done: one accepted just before then would otherwise be kept
    alive for as long as its client keeps it busy, on the old listener and the old app."""

    draining = False


def http_protocol_class(
    max_header_bytes: int = 64 * 1024,
    http2: Http2Limits | None = None,
    limits: ClientLimits | None = None,
) -> type[asyncio.Protocol] | str:
    """The listener's protocol class; with ``http2``, one that serves a connection that
    negotiated ALPN h2 with ``gateway/http2`` instead (HTTP/2 needs httptools too)."""
    if HttpToolsProtocol is None:
        return "h11"
    base: type[asyncio.Protocol] = GatewayHttpToolsProtocol
    attrs: dict[str, Any] = {"max_header_bytes": max_header_bytes}
    if limits is not None:
        attrs["limits"] = limits
    if http2 is not None:
        from gateway.http2.dispatch import ALPNDispatchProtocol

        base = ALPNDispatchProtocol
        attrs["http2_limits"] = http2
    return type("GatewayHttpToolsProtocol", (base,), attrs)


def traced(protocol: type[asyncio.Protocol] | str, trace: bool) -> type[asyncio.Protocol] | str:
    """``protocol`` with trace mode on (``gateway.tracing``): each request's scope gets a
    ``Trace`` started with the connection's facts.  Off, the class is used as it is."""
    if not trace or isinstance(protocol, str):
        return protocol
    return type(protocol.__name__, (protocol,), {"trace": True})


# Request fields ``on_header`` notes besides keeping them: Expect, and the body's framing.
_NOTED_FIELDS = frozenset({b"expect", b"content-length", b"transfer-encoding"})


class HeadTooLarge(Exception):
    pass


class FinishedCycle:
    """Stands in for uvicorn's cycle after a hot hit: a response that is complete."""

    response_complete = True
    more_body = False
    disconnected = False
    keep_alive = True
    message_event = asyncio.Event()  # set by connection_lost; nobody waits on it


FINISHED = FinishedCycle()


def asks_for_websocket(headers: list[tuple[bytes, bytes]]) -> bool:
    """``Connection: upgrade`` and ``Upgrade: websocket`` (RFC 6455 §4.1), any case."""
    connection = upgrade = False
    for name, value in headers:
        if name == b"connection":
            connection = connection or any(
                token.strip().lower() == b"upgrade" for token in value.split(b",")
            )
        elif name == b"upgrade":
            upgrade = upgrade or any(
                token.strip().lower() == b"websocket" for token in value.split(b",")
            )
    return connection and upgrade


class UpgradeHandle:
    """Lets the WebSocket handler take a connection over from uvicorn after the handshake."""

    __slots__ = ("protocol", "pending", "taken")

    def __init__(self, protocol: GatewayHttpToolsProtocol) -> None:
        self.protocol = protocol
        self.pending: list[bytes] = []  # client bytes after the request head
        self.taken = False

    def take_over(self) -> tuple[asyncio.Transport, bytes]:
        """The client's transport (reading paused) and the bytes it sent after the head.

        uvicorn forgets the connection: it neither answers for the app when the app returns
        without a response, nor closes it as an idle keep-alive connection; the tunnel's
        request task still counts for graceful shutdown."""
        protocol = self.protocol
        protocol.corked.flush()  # what the connection still holds goes before the tunnel
        self.taken = True
        cycle = protocol.cycle
        if cycle is not None:
            cycle.disconnected = True
        protocol.connections.discard(protocol)
        protocol._disarm()  # the tunnel's idle timeout applies from now on
        data = b"".join(self.pending)
        self.pending = []
        return protocol.transport, data


if HttpToolsProtocol is not None:

    class GatewayHttpToolsProtocol(HttpToolsProtocol):
        corked: CorkedTransport
        max_header_bytes = 64 * 1024
        trace = False  # see ``traced``; one test per request when off
        _trace_accepted = 0.0
        _trace_begin = 0.0
        _trace_requests = 0
        limits = ClientLimits()
        _head_bytes = 0
        _head_too_large = False
        _uri_too_long = 0  # the limit that was exceeded, for the 414
        _too_many_fields = 0  # likewise for the 431
        _in_head = False  # between a message's first byte and the end of its head
        _requests = 0
        _sni: str | None = None
        _cert_names: tuple[str, ...] | None = None  # on the certificate this connection got
        # The one timer of the connection (see _arm): what it waits for, until when, and when
        # the armed handle fires (at or before the deadline).  No phase: a request is being
        # answered, nothing to time.
        _timer: asyncio.TimerHandle | None = None
        _timer_at = 0.0
        _phase: Phase | None = None
        _deadline = 0.0
        _last_body = 0.0
        # The bytes after a complete request were not HTTP: answered 400 after its response.
        _refuse_after_response = False
        _connect = False  # a CONNECT request: 501
        # The parser stopped at an upgrade request's head: later bytes are not HTTP.
        _upgrade: UpgradeHandle | None = None
        _switched = False
        _framed = False  # the request head has Content-Length or Transfer-Encoding
        # (config, uvicorn's error and access loggers, whether the access one has handlers)
        _shared: tuple[Any, logging.Logger, logging.Logger, bool] | None = None

        def data_received(self, data: bytes) -> None:
            if self._switched:
                upgrade = self._upgrade
                if upgrade is not None and not upgrade.taken:
                    upgrade.pending.append(data)
                return
            if self._refuse_after_response:
                return  # the parser has failed; the 400 follows the response in progress
            cycle = self.cycle
            phase = self._phase
            if (phase is None or phase is Phase.IDLE) and (
                cycle is None or cycle.response_complete
            ):
                # Bytes on an idle connection start a request head: its clock starts now
                # (even bare CRLFs, which llhttp skips: they must not keep a socket alive).
                self._arm(Phase.HEAD, self.limits.header_timeout)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                cycle = self.cycle
                if cycle is not None and not cycle.response_complete and not cycle.more_body:
                    # A complete request is being answered: answer it, then refuse the rest.
                    self._refuse_after_response = True
                    self.flow.pause_reading()
                    return
                self.send_400_response("Invalid HTTP request received.")
            except httptools.HttpParserUpgrade as exc:
                self._switched = True
                self.transport.pause_reading()
                if self.cycle is not None:
                    self.cycle.keep_alive = False  # unless a tunnel takes the connection
                if self._upgrade is not None:
                    self._upgrade.pending.append(data[exc.args[0] :])

        def __init__(
            self,
            config: Any,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            """uvicorn's, less what is the same for every connection of the process and was
            looked up again for each: the two loggers, whether the access one has handlers
            (a walk up the logger tree), the config's attributes."""
            shared = self._shared
            if shared is None or shared[0] is not config:
                if not config.loaded:
                    config.load()
                access_logger = logging.getLogger("uvicorn.access")
                shared = type(self)._shared = (
                    config,
                    logging.getLogger("uvicorn.error"),
                    access_logger,
                    access_logger.hasHandlers(),
                )
            _, self.logger, self.access_logger, self.access_log = shared
            self.config = config
            self.app = config.loaded_app
            self.loop = _loop or asyncio.get_event_loop()
            self.parser = httptools.HttpRequestParser(self)
            # uvicorn's: answer the first of pipelined requests even when data follows a close.
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
            self.ws_protocol_class = config.ws_protocol_class
            self.root_path = config.root_path
            self.asgi_version = config.asgi_version
            self.limit_concurrency = config.limit_concurrency
            self.app_state = app_state
            self.timeout_keep_alive_task = None
            self.timeout_keep_alive = config.timeout_keep_alive
            self.server_state = server_state
            self.connections = server_state.connections
            self.tasks = server_state.tasks
            self.transport = None  # type: ignore[assignment]
            self.flow = None  # type: ignore[assignment]
            self.server = None
            self.client = None
            self.scheme = None
            self.pipeline = deque()
            self.scope = None  # type: ignore[assignment]
            self.headers = None  # type: ignore[assignment]
            self.expect_100_continue = False
            self.cycle = None  # type: ignore[assignment]

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            # uvicorn's, with the addresses from transport_addresses (no system calls).
            self.connections.add(self)
            self.transport = transport
            self.flow = FlowControl(transport)
            self.server, self.client = transport_addresses(transport)
            self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"
            self.corked = CorkedTransport(transport, self.loop)
            if self.trace:
                self._trace_accepted = time.perf_counter()
            if len(self.connections) > self.limits.max_connections:
                error = TooManyConnections(
                    f"more than {self.limits.max_connections} connections (max_connections)"
                )
                transport.write(raw_error_response(error))
                transport.close()
                return
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                self._sni = getattr(ssl_object, "gateway_sni", None)
                self._cert_names = getattr(ssl_object, "gateway_cert_names", None)
            state = self.server_state
            if isinstance(state, ListenerState) and state.draining:
                # Handshake done after the listener began to drain: uvicorn did not ask this
                # connection to finish.  Its first request (likely in flight) is its last.
                self.limits = replace(self.limits, keepalive_requests=1)
            self._arm(Phase.HEAD, self.limits.header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._phase = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

        # -- the connection's timer ----------------------------------------------------------
        def _arm(self, phase: Phase, timeout: float) -> None:
            """Wait ``timeout`` for ``phase``: the keep-alive wait (uvicorn had a timer of its
            own for it), a request head, a request body.  Lazily: the armed handle moves only
            to an earlier deadline, and one that fires early sleeps again until the real one,
            so a busy keep-alive connection arms about one timer per timeout, not two per
            request."""
            self._phase = phase
            deadline = self.loop.time() + timeout
            self._deadline = deadline
            timer = self._timer
            if timer is None or self._timer_at > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = self.loop.call_at(deadline, self._expire)
                self._timer_at = deadline

        def _disarm(self) -> None:
            self._phase = None  # an armed handle finds nothing to do when it fires

        def _expire(self) -> None:
            self._timer = None
            phase = self._phase
            if phase is None or self.transport.is_closing():
                return
            now = self.loop.time()
            if phase is Phase.BODY:
                deadline = body_deadline(
                    self._last_body, self.limits.body_timeout, now, self.flow.read_paused
                )
            else:
                deadline = self._deadline
            if now < deadline:  # moved on since the handle was armed: sleep until then
                self._timer = self.loop.call_at(deadline, self._expire)
                self._timer_at = deadline
                return
            cycle = self.cycle
            if phase is Phase.IDLE:
                self.corked.close()  # keepalive_timeout without a new request
                return
            if phase is Phase.BODY:
                message = f"no request body bytes for {self.limits.body_timeout:g} s"
            elif self._in_head:
                message = f"request head not complete within {self.limits.header_timeout:g} s"
            else:
                # Not one byte of a request: nothing to answer, like an idle keep-alive close.
                self.corked.close()
                return
            if cycle is not None and not cycle.response_complete:
                cycle.scope["gateway.closed_status"] = RequestTimeout.status  # type: ignore[typeddict-unknown-key]
                started = cycle.response_started
                cycle.disconnected = True  # the app sees http.disconnect and stops
                cycle.message_event.set()
                if started:
                    self.corked.close()
                    return
            self.corked.write(raw_error_response(RequestTimeout(message)))
            self.corked.close()

        # -- parser callbacks ----------------------------------------------------------------
        # uvicorn's per-request callbacks are inlined here rather than called through
        # ``super()``: they run for every request, and the hot path counts every call.
        def on_message_begin(self) -> None:
            self.url = b""
            self.expect_100_continue = False
            self.headers = []
            self._framed = False
            if self.trace:
                self._trace_begin = time.perf_counter()
            self._head_bytes = 0
            self._in_head = True

        def _new_scope(self) -> None:
            """uvicorn's scope for the request; built only once a hot hit has not answered."""
            self.scope = {  # type: ignore[typeddict-item]
                "type": "http",
                "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
                "http_version": "1.1",
                "server": self.server,
                "client": self.client,
                "scheme": self.scheme,  # type: ignore[typeddict-item]
                "root_path": self.root_path,
                "headers": self.headers,
                "state": self.app_state.copy(),
            }

        def _too_large(self) -> None:
            # Raising inside a parser callback stops llhttp at once; uvicorn then calls
            # send_400_response, which answers 431 for this case.
            self._head_too_large = True
            raise HeadTooLarge

        def on_url(self, url: bytes) -> None:
            size = len(url)
            self._head_bytes += size
            if self._head_bytes > self.max_header_bytes:
                self._too_large()
            if len(self.url) + size > self.limits.max_request_line:
                self._uri_too_long = self.limits.max_request_line
                raise HeadTooLarge
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_bytes += len(name) + len(value) + 4
            if self._head_bytes > self.max_header_bytes:
                self._too_large()
            if not self._in_head:
                return  # a trailer field of a chunked body: never a request header
            headers = self.headers  # this head's fields so far
            if len(headers) >= self.limits.max_header_fields:
                self._too_many_fields = self.limits.max_header_fields
                raise HeadTooLarge
            name = name.lower()
            # llhttp keeps trailing OWS, which RFC 9110 §5.5 excludes from the value.
            value = value.rstrip(b" \t")
            if name in _NOTED_FIELDS:  # one lookup for the usual field
                if name == b"expect":
                    if value.lower() == b"100-continue":
                        self.expect_100_continue = True
                else:
                    self._framed = True  # the body's clock starts with the head's end
            headers.append((name, value))

        def on_body(self, body: bytes) -> None:
            self._last_body = self.loop.time()
            super().on_body(body)

        def on_message_complete(self) -> None:
            if self._phase is Phase.BODY:
                self._disarm()
            cycle = self.cycle
            if cycle.response_complete or (
                self.ws_protocol_class is not None
                and self.parser.should_upgrade()
                and self._should_upgrade()
            ):
                return
            cycle.more_body = False
            cycle.message_event.set()

        def on_response_complete(self) -> None:
            if self._refuse_after_response and not self.pipeline:
                self.server_state.total_requests += 1
                if not self.transport.is_closing():
                    error = MalformedRequest("malformed HTTP request after a complete request")
                    self.corked.write(raw_error_response(error))
                    self.corked.close()
                return
            # uvicorn's, inlined, with its keep-alive timer folded into the connection's one.
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self.flow.resume_reading()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            elif self._in_head:
                # A pipelined head was cut short while the previous response went out.
                self._arm(Phase.HEAD, self.limits.header_timeout)
            else:
                self._arm(Phase.IDLE, self.timeout_keep_alive)

        def _start_trace(self) -> Trace:
            """The request's trace: offset 0 is the connection's accept (after the TLS
            handshake) for its first request, the request's first byte after that.  Called
            before uvicorn builds the scope's method and path: the parser has them."""
            before = self._trace_requests
            self._trace_requests = before + 1
            started = self._trace_accepted if before == 0 else self._trace_begin
            trace = Trace(started)
            ssl_object = self.transport.get_extra_info("ssl_object")
            trace.add("gateway.listener", connection_text(before, ssl_object, self.client), started)
            parser = self.parser
            head = head_text(
                parser.get_method().decode("latin-1"),
                bytes(self.url),
                parser.get_http_version(),
                len(self.headers),
                self._head_bytes,
            )
            trace.add("gateway.listener", head)
            return trace

        def on_headers_complete(self) -> None:
            if self.trace:
                self._new_scope()
                self.scope[TRACE_SCOPE_KEY] = self._start_trace()  # type: ignore[literal-required]
            self._in_head = False
            self._disarm()
            parser = self.parser
            method = parser.get_method()
            if method == b"CONNECT":
                # Its authority-form target is no URL uvicorn can parse: refuse it here.
                self._connect = True
                raise HeadTooLarge
            self._requests += 1
            if self._answer_hot():
                return
            if not self.trace:
                self._new_scope()
            scope = self.scope
            url = self.url
            http_version = parser.get_http_version()
            scope["method"] = method.decode("ascii")
            if http_version != "1.1":
                scope["http_version"] = http_version
            if self._sni is not None:
                scope["gateway.sni"] = self._sni  # type: ignore[typeddict-unknown-key]
                scope["gateway.cert_names"] = self._cert_names  # type: ignore[typeddict-unknown-key]
            if url[:1] != b"/":
                scope["gateway.target"] = bytes(url)  # type: ignore[typeddict-unknown-key]
            upgrading = parser.should_upgrade()
            if upgrading:
                if method == b"GET" and http_version == "1.1" and asks_for_websocket(self.headers):
                    self._upgrade = UpgradeHandle(self)
                    scope["gateway.upgrade"] = self._upgrade  # type: ignore[typeddict-unknown-key]
                if self._should_upgrade():
                    return  # uvicorn's own WebSocket protocol (``ws`` configured) takes it
            if http_version == "1.1":
                scope[INTERIM_SCOPE_KEY] = True  # type: ignore[literal-required]
            # uvicorn's on_headers_complete from here, with our cycle built directly.
            parsed_url = httptools.parse_url(url)
            raw_path = parsed_url.path
            path = raw_path.decode("ascii")
            if "%" in path:
                path = urllib.parse.unquote(path)
            root_path = self.root_path
            scope["path"] = root_path + path
            scope["raw_path"] = root_path.encode("ascii") + raw_path if root_path else raw_path
            scope["query_string"] = parsed_url.query or b""
            app = self.app
            if self.limit_concurrency is not None and (
                len(self.connections) >= self.limit_concurrency
                or len(self.tasks) >= self.limit_concurrency
            ):
                app = service_unavailable
                self.logger.warning("Exceeded concurrency limit.")
            cycle = GatewayCycle(
                scope=scope,
                transport=self.corked,  # type: ignore[arg-type]
                flow=self.flow,
                logger=self.logger,
                access_logger=self.access_logger,
                access_log=self.access_log,
                default_headers=self.server_state.default_headers,
                message_event=asyncio.Event(),
                expect_100_continue=self.expect_100_continue,
                keep_alive=http_version != "1.0" and parser.should_keep_alive(),
                on_response=self.on_response_complete,
            )
            cycle.interim = http_version == "1.1"
            cycle.http10 = http_version == "1.0"
            if is_last_request(self._requests, self.limits):
                cycle.keep_alive = False
            previous = self.cycle
            self.cycle = cycle
            if previous is None or previous.response_complete:
                self._start_asgi_task(cycle, app)
            else:
                # A pipelined request waits for the response before it.
                self.flow.pause_reading()
                self.pipeline.appendleft((cycle, app))
            if self._framed:
                # The body's clock; on_message_complete stops it (at once for an empty body).
                self._last_body = self.loop.time()
                self._arm(Phase.BODY, self.limits.body_timeout)

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            """Start a request (uvicorn calls this for the next one, also after a pipelined
            response): on the express lane when it takes the request, else uvicorn's task."""
            express: ExpressLane | None = getattr(getattr(app, "current", None), "express", None)
            if express is not None:
                try:
                    if express.start(cycle, self, app):
                        return
                except Exception:  # noqa: BLE001 - never a failed request: the full path answers
                    express.fail()
            super()._start_asgi_task(cycle, app)

        def start_full_path(self, cycle: Any, app: Any) -> None:
            """uvicorn's task for a request the express lane hands back."""
            super()._start_asgi_task(cycle, app)

        def express_blocked(self, cycle: Any, size: int) -> bool:
            """Whether the express lane must leave a response of ``size`` body bytes to the
            full path, which waits for a client that stopped reading."""
            return self.flow.write_paused

        def abort_response(self, cycle: Any) -> None:
            """The express lane failed mid-response: close, as uvicorn does after an app's
            failure."""
            self.corked.close()

        def _answer_hot(self) -> bool:
            """Answer a plain GET or HEAD from the app's hot hits (``gateway.cache.hot``), with
            no scope, cycle or task; False when the request takes the full path."""
            hot: HotHits | None = getattr(getattr(self.app, "current", None), "hot", None)
            if hot is None or not hot.entries:
                return False
            cycle = self.cycle
            parser = self.parser
            if (
                (cycle is not None and not cycle.response_complete)
                or self.pipeline
                # A client that does not read: the full path waits for the drain and stops
                # reading meanwhile, so pipelined requests cannot pile up answers in memory.
                or self.flow.write_paused
                or self.transport.is_closing()
                or parser.get_http_version() != "1.1"
                or parser.should_upgrade()
                or self.url[:1] != b"/"
            ):
                return False
            method = parser.get_method()
            if method != b"GET" and method != b"HEAD":
                return False
            close = not parser.should_keep_alive() or is_last_request(self._requests, self.limits)
            try:
                answer = hot.serve(
                    self._sni,
                    self._cert_names,
                    self.url,
                    self.headers,
                    self.client,
                    time.perf_counter(),
                    method=method.decode(),
                    close=close,
                )
            except Exception:
                hot.fail()  # never a failed request: the full path answers from now on
                return False
            if answer is None:
                return False
            head, body = answer
            # uvicorn's later callbacks (message complete, connection lost, shutdown) see a
            # finished response on this connection.
            self.cycle = FINISHED  # type: ignore[assignment]
            corked = self.corked
            corked.write(head)
            corked.write(body)
            if close:
                corked.close()
            self.on_response_complete()
            return True

        def send_400_response(self, msg: str) -> None:
            self._disarm()
            error: RequestRejected = parse_error(
                self._head_too_large,
                self.max_header_bytes,
                uri_too_long=self._uri_too_long,
                too_many_fields=self._too_many_fields,
            )
            if self._connect:
                error = NotImplementedMethod(CONNECT_REFUSED)
            # After what is held: a pipelined request before this one may have been answered.
            self.corked.write(raw_error_response(error))
            self.corked.close()

        def shutdown(self) -> None:
            # uvicorn closes an idle connection at once: a response held this iteration first.
            self.corked.flush()
            super().shutdown()
