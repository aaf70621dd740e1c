"""The proxy handler: streams each request to a server of the route's upstream pool.

Per request the route's ``Upstream`` picks a server (round robin over healthy ones) and one
exchange runs over a pooled keep-alive connection.  A request body is read whole first
(``gateway.handlers.buffering``, memory then a temporary file) unless the route sets
``request_buffering = false``, in which case it is streamed like the response, with
back-pressure; a failed attempt is retried on another server only when ``retry.may_retry``
says the upstream cannot have acted on it.  Failures are raised as ``gateway.errors`` types;
``GatewayApp`` turns them into the client's answer.

Health reporting counts only what the server did: a failure while the client's body was still
incomplete (a stalled upload, a client that left) is the client's and is never reported; a
server that was DOWN and answers well is UP again at once (see ``gateway.health``).

This is the hot path, so it works on raw ASGI messages (no Starlette request objects) and
avoids per-request tasks unless a body actually has to flow in both directions at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.access_log import Exchange
from gateway.asgi import INTERIM, INTERIM_SCOPE_KEY, Receive, Send
from gateway.config import Settings, UpstreamServer
from gateway.errors import (
    ClientDisconnected,
    ContentTooLarge,
    GatewayError,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.handlers.buffering import BufferedBody
from gateway.headers import (
    Headers,
    TrustedProxies,
    client_response_headers,
    upstream_request_headers,
)
from gateway.health import FailureKind
from gateway.request import Request
from gateway.retry import IDEMPOTENT_RETRYABLE, may_retry
from gateway.tracing import choice_text, pool_text, retry_text
from gateway.upstream.connection import UpstreamConnection
from gateway.upstream.events import Interim, ResponseHead
from gateway.upstream.group import Upstream

log = logging.getLogger("gateway.proxy")

# The scope key of an exchange the express lane started and hands over (``Handoff``).
HANDOFF_SCOPE_KEY = "gateway.handoff"


class Handoff:
    """What the express lane (``gateway.express``) hands to this handler's first attempt.

    An exchange it started on a pooled connection (``conn``): the response needs the full
    path (a 1xx, 5xx, large or streamed body) or the attempt failed (closed, reset, timed
    out).  The full path carries on with it exactly as if it had written the request itself,
    so nothing is sent upstream twice and retries, health reports and error answers are the
    usual ones.  Or only the server it chose (``conn`` None: no idle connection to it), which
    the first attempt then uses, so the round robin is not advanced twice."""

    __slots__ = ("upstream", "server", "conn", "started", "exchange", "taken")

    def __init__(
        self,
        upstream: Upstream,
        server: UpstreamServer,
        conn: UpstreamConnection | None,
        started: float,
        exchange: Exchange,
    ) -> None:
        self.upstream = upstream
        self.server = server
        self.conn = conn
        self.started = started  # time.perf_counter() when the request head was written
        self.exchange = exchange  # the request's so far (its X-Request-ID went upstream)
        self.taken = False

    def take(self, upstream: Upstream) -> Handoff | None:
        """This handoff, once, for the attempt on its own pool (a reload in between makes a
        new pool: then nobody takes it and the app closes the connection)."""
        if self.taken or upstream is not self.upstream:
            return None
        self.taken = True
        return self

    def drop(self) -> None:
        """Nobody carried the exchange on (the cache answered after all, or an error came
        first): its connection has a response in flight and cannot be reused."""
        if not self.taken:
            self.taken = True
            if self.conn is not None:
                self.conn.close()


def request_head(method: str, target: bytes, headers: Headers) -> bytes:
    """The upstream request's head (RFC 9112 §3): request line and fields."""
    # One join of whole lines, each made in C (``map``): a third less CPU than formatting
    # each field with ``%``.
    lines = [method.encode() + b" " + target + b" HTTP/1.1", *map(b": ".join, headers), b"\r\n"]
    return b"\r\n".join(lines)


class Relay:
    """One forward's view of its response: where it goes (``send``), whether it has started
    sending it (the retry policy's "has the client seen anything": a cache wrapper may hold
    what it got), the upstream's status, and for a WebSocket handshake (``upgrade``) the
    connection the upstream switched to a tunnel."""

    __slots__ = ("send", "started", "status", "upgrade", "switched")

    def __init__(self, send: Send, upgrade: bool = False) -> None:
        self.send = send
        self.started = False
        self.status = 0
        self.upgrade = upgrade
        self.switched: UpstreamConnection | None = None


class RequestBody:
    """The client's request body as the upstream will see it, read lazily.

    ``pending`` holds bytes received from the client but not yet written upstream, so a retry
    on another server can still send them; once any byte is written (``sent``) the body can no
    longer be replayed and the request is no longer retryable.
    """

    __slots__ = ("receive", "limit", "chunked", "received", "pending", "more", "sent")
    in_memory = False  # never held whole: see BufferedBody

    def __init__(self, receive: Receive, limit: int, chunked: bool) -> None:
        self.receive = receive
        self.limit = limit
        self.chunked = chunked
        self.received = 0
        self.pending: bytes | None = None
        self.more = True
        self.sent = False

    async def next_chunk(self) -> tuple[bytes, bool]:
        if self.pending is not None:
            return self.pending, self.more
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("client disconnected while sending the request body")
        data: bytes = message.get("body", b"")
        self.more = message.get("more_body", False)
        self.received += len(data)
        if self.received > self.limit:
            raise ContentTooLarge(
                f"request body is larger than the {self.limit}-byte limit (max_body_bytes)"
            )
        self.pending = data
        return data, self.more

    def write_to(self, conn: UpstreamConnection, data: bytes, more: bool) -> None:
        if self.chunked:
            frame = b"%x\r\n%s\r\n" % (len(data), data) if data else b""
            if not more:
                frame += b"0\r\n\r\n"
            if frame:
                conn.write(frame)
                self.sent = True
        elif data:
            conn.write(data)
            self.sent = True
        self.pending = None
        if not more:
            conn.finish_request()

    async def pump(self, conn: UpstreamConnection) -> None:
        """Copy the rest of the body upstream, honouring the upstream's back-pressure."""
        try:
            while True:
                data, more = await self.next_chunk()
                self.write_to(conn, data, more)
                await conn.drain()
                if not more:
                    return
        except GatewayError as exc:
            conn.abort(exc)
        except Exception as exc:  # noqa: BLE001 - any failure must end the exchange, not hang it
            conn.abort(UpstreamClosed(f"request body failed: {exc}", request_sent=True))


class ProxyHandler:
    """Forwards requests to the route's upstream pool (see the module docstring)."""

    def __init__(self, settings: Settings, upstreams: dict[str, Upstream]) -> None:
        self.upstreams = upstreams
        self.trusted = TrustedProxies(settings.gateway.trusted_proxies)
        self.max_body = settings.gateway.max_body_bytes
        self.body_memory = settings.gateway.body_buffer_bytes

    async def __call__(self, request: Request) -> None:
        await self.forward(request, request.send, None)

    def upstream_headers(self, request: Request, replacement: Headers | None = None) -> Headers:
        """The request headers as the upstream sees them (hop-by-hop removed, X-Forwarded-*
        set); ``replacement`` stands in for the client's (the cache's revalidation)."""
        scope = request.scope
        client = scope.get("client")
        return upstream_request_headers(
            scope["headers"] if replacement is None else replacement,
            client=client[0] if client else "unknown",
            host=request.facts.host.encode(),
            trusted=self.trusted,
            request_id=request.exchange.request_id.encode(),
        )

    async def forward(
        self, request: Request, send: Send, request_headers: Headers | None = None
    ) -> None:
        """Forward the request and stream the response to ``send``.

        ``send`` is the client's, or the cache's wrapper around it; ``request_headers``
        replaces the client's headers (the cache revalidates with its own validators).  Either
        way they are rewritten for the upstream here.
        """
        await self._forward(request, Relay(send), request_headers)

    async def handshake(self, request: Request) -> UpstreamConnection | None:
        """Forward a WebSocket upgrade request: the connection the upstream switched to a
        tunnel on its 101, or None when it answered otherwise (that answer was relayed to the
        client as usual).  Same server choice, retries and health reporting as ``forward``."""
        relay = Relay(request.send, upgrade=True)
        await self._forward(request, relay, None)
        return relay.switched

    async def _forward(
        self, request: Request, relay: Relay, request_headers: Headers | None
    ) -> None:
        scope, facts, route = request.scope, request.facts, request.route
        method = request.method
        upstream = self.upstreams[route.upstream]  # type: ignore[index]
        headers = self.upstream_headers(request, request_headers)
        target = route.upstream_target(scope["raw_path"], scope["query_string"])
        has_body = facts.chunked or bool(facts.content_length)
        body: RequestBody | BufferedBody | None = None
        if has_body and route.request_buffering and not relay.upgrade:
            # Before any upstream connection is used (see gateway.handlers.buffering).
            body = await BufferedBody.read(request.receive, self.max_body, self.body_memory)
            headers.append((b"content-length", b"%d" % body.size))
        elif facts.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        elif facts.content_length is not None:
            headers.append((b"content-length", b"%d" % facts.content_length))
        if relay.upgrade:
            # Hop-by-hop, so removed above; a handshake is the one request that carries them.
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
        head = request_head(method, target, headers)
        if has_body and body is None:
            body = RequestBody(request.receive, self.max_body, facts.chunked)
        try:
            await self._attempts(upstream, head, body, request, relay)
        finally:
            if isinstance(body, BufferedBody):
                body.close()

    async def _attempts(
        self,
        upstream: Upstream,
        head: bytes,
        body: RequestBody | BufferedBody | None,
        request: Request,
        relay: Relay,
    ) -> None:
        """Try servers of the pool until one answers or ``retry.may_retry`` says stop."""
        method, exchange = request.method, request.exchange
        if not upstream.ready.is_set():
            await upstream.wait_ready()  # start-up: the first health check has not passed yet
        tried: list[UpstreamServer] = []
        all_down = True  # every server tried was DOWN when chosen (see Upstream.choose)
        attempts_left = upstream.retries
        handoff: Handoff | None = request.scope.get(HANDOFF_SCOPE_KEY)
        if handoff is not None:
            handoff = handoff.take(upstream)
        while True:
            server = handoff.server if handoff is not None else upstream.choose(tried)
            tried.append(server)
            all_down = all_down and not upstream.is_up(server)
            exchange.upstream = server.address
            if exchange.trace is not None:
                exchange.trace.add("gateway.upstream.group", choice_text(upstream, server, tried))
            pool = upstream.pools[server]
            pool.in_flight += 1  # the admin API's in-flight count per server
            try:
                await self._exchange(upstream, server, head, body, request, relay, handoff)
                if exchange.upstream_5xx:
                    upstream.report_failure(
                        server, FailureKind.STATUS_5XX, f"responded {relay.status}"
                    )
                else:
                    upstream.report_success(server)
                return
            except UpstreamError as exc:
                kind = failure_kind(exc)
                # A failure while the client's body was incomplete is the client's doing.
                if kind is not None and (body is None or not body.more):
                    upstream.report_failure(server, kind, exc.message)
                if not may_retry(
                    exc,
                    method=method,
                    response_started=relay.started,
                    body_sent=body is not None and body.sent,
                    attempts_left=attempts_left,
                ):
                    if exchange.trace is not None:
                        facts = {
                            "method": method,
                            "request_sent": exc.request_sent,
                            "response_started": relay.started,
                            "body_sent": body is not None and body.sent,
                            "attempts_left": attempts_left,
                        }
                        exchange.trace.add(
                            "gateway.retry", retry_text(server.address, exc.message, False, facts)
                        )
                    if all_down and not relay.started and len(tried) == len(upstream.health):
                        # Each server was DOWN and failed again: the pool is down, not one try.
                        raise upstream.all_down() from exc
                    raise
                attempts_left -= 1
                if exchange.trace is not None:
                    exchange.trace.add(
                        "gateway.retry", retry_text(server.address, exc.message, True, {})
                    )
                log.warning("%s %s: %s; retrying on another server", *exchange.line, exc.message)
            finally:
                pool.in_flight -= 1
                handoff = None

    async def _exchange(
        self,
        upstream: Upstream,
        server: UpstreamServer,
        head: bytes,
        body: RequestBody | BufferedBody | None,
        request: Request,
        relay: Relay,
        handoff: Handoff | None = None,
    ) -> None:
        """One attempt on ``server`` (carried on from ``handoff`` when given).  A pooled
        connection that turns out to be closed by the server (its keep-alive timer raced our
        request) is replaced by a fresh connection to the same server, once, when that is
        safe: it says nothing about the server's health and must not become a 502."""
        method, exchange = request.method, request.exchange
        pool = upstream.pools[server]
        resumed: float | None = None
        if handoff is not None and handoff.conn is not None:
            conn, resumed = handoff.conn, handoff.started
            conn.unwatch()
        else:
            conn = await pool.acquire()
        while True:
            reused = conn.requests > 0
            if exchange.trace is not None:
                exchange.trace.add(
                    "gateway.upstream.pool", pool_text(server.address, reused, conn.requests)
                )
            try:
                await self._exchange_on(conn, head, body, request, relay, resumed)
                if relay.switched is conn:
                    return  # a tunnel now: the WebSocket handler owns the connection
            except UpstreamClosed as exc:
                conn.close()
                stale = (
                    reused
                    and not conn.response_received
                    and not relay.started
                    and not (body is not None and body.sent)
                    and (not exc.request_sent or method in IDEMPOTENT_RETRYABLE)
                )
                if not stale:
                    raise
                log.info(
                    "%s %s: pooled connection to %s was closed; reconnecting",
                    *exchange.line,
                    server,
                )
                conn, resumed = await pool.acquire(fresh=True), None
                continue
            except BaseException:
                conn.close()
                raise
            pool.release(conn)
            return

    async def _exchange_on(
        self,
        conn: UpstreamConnection,
        head: bytes,
        body: RequestBody | BufferedBody | None,
        request: Request,
        relay: Relay,
        resumed: float | None = None,
    ) -> None:
        """The exchange on ``conn``; ``resumed``: the express lane already wrote this
        (bodiless) request at that time (``Handoff``), carry on with its response."""
        method, exchange = request.method, request.exchange
        send = relay.send
        pump: asyncio.Task[None] | None = None
        watcher: asyncio.Task[None] | None = None
        try:
            if resumed is not None:
                started = resumed
            else:
                started = time.perf_counter()
                conn.start(
                    head,
                    head_request=method == "HEAD",
                    has_body=body is not None,
                    upgrade=relay.upgrade,
                )
            if isinstance(body, BufferedBody):
                if not body.write_to(conn):  # held in memory: written at once
                    pump = asyncio.create_task(body.pump(conn))
            elif body is not None:
                # The common small body arrives in one piece: write it inline, no task.
                data, more = await body.next_chunk()
                body.write_to(conn, data, more)
                if more:
                    pump = asyncio.create_task(body.pump(conn))

            response = await conn.receive_interim_or_head()
            while isinstance(response, Interim):
                # RFC 9110 §15.2: a proxy forwards 1xx (Early Hints) ahead of the final
                # response, to clients the listener can send them to (HTTP/1.1).
                if request.scope.get(INTERIM_SCOPE_KEY):
                    hints = client_response_headers(response.headers)
                    await send({"type": INTERIM, "status": response.status, "headers": hints})
                response = await conn.receive_interim_or_head()
            relay.status = response.status
            exchange.upstream_seconds += time.perf_counter() - started  # Server-Timing
            if exchange.trace is not None:
                exchange.trace.add(
                    "gateway.handlers.proxy",
                    f"upstream head received: {response.status}"
                    f" ({len(response.headers)} header fields)",
                )
            if conn.switched:
                relay.switched = conn
                return
            if response.status >= 500:
                exchange.upstream_5xx = True
            headers = final_response_headers(response)
            data, more = b"", False
            if conn.response_complete or small_body(response.headers):
                # A small body is read whole before the head goes out: if the upstream dies
                # mid-body, nothing has reached the client yet and an idempotent request can
                # still be retried on another server instead of ending truncated.
                data = await conn.receive_all()
            relay.started = True
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            if more or not conn.response_complete:
                data, more = await conn.receive_body()
                if more and pump is None:
                    # A long response: notice a client that leaves, so we stop reading.
                    watcher = asyncio.create_task(_watch_disconnect(conn, request.receive))
            while True:
                await send({"type": "http.response.body", "body": data, "more_body": more})
                if not more:
                    break
                data, more = await conn.receive_body()
            if exchange.trace is not None:
                exchange.trace.add(
                    "gateway.handlers.proxy",
                    f"response body relayed ({exchange.bytes_sent} bytes reached the client)",
                )
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
            if watcher is not None:
                watcher.cancel()


async def _watch_disconnect(conn: UpstreamConnection, receive: Receive) -> None:
    # Only started once the request body is fully read: ``receive`` then returns nothing but
    # a disconnect (uvicorn also reports one once the response is complete: nothing to stop).
    while (await receive())["type"] != "http.disconnect":
        pass  # a bodiless request still has its one empty http.request message pending
    if not conn.response_complete:
        conn.abort(ClientDisconnected("client disconnected during the response"))


def final_response_headers(response: ResponseHead) -> Headers:
    """The upstream's final response fields as the client gets them (hop-by-hop removed)."""
    headers = client_response_headers(response.headers)
    if response.status in (204, 304):
        # No body, whatever the upstream framed (RFC 9110 §8.6, §15.4.5): a length here
        # would have the listener wait for bytes that never come.
        headers = [pair for pair in headers if pair[0] != b"content-length"]
    return headers


SMALL_BODY = 64 * 1024


def small_body(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.isdigit() and int(value) <= SMALL_BODY
    return False


def failure_kind(exc: UpstreamError) -> FailureKind | None:
    """What a failed attempt says about the server's health (None: nothing)."""
    if isinstance(exc, UpstreamConnectError):
        return FailureKind.CONNECT
    if isinstance(exc, UpstreamConnectTimeout | UpstreamTimeout):
        return FailureKind.TIMEOUT
    if isinstance(exc, UpstreamClosed):
        # A pooled connection found closed before we wrote to it is a normal race with the
        # server's keep-alive timer, not a sign of a sick server.
        return FailureKind.RESET if exc.request_sent else None
    return None
