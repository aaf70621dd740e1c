"""The express lane: a proxied GET or HEAD answered without an ASGI task.

Why.  Through the full request path a small proxied request costs ~115-135 µs of Python
(``bench/request_path.py``: no sockets, no TLS), a fifth of it the machinery around the work
rather than the work: uvicorn's task per request, the app's chain of coroutines (app, cache,
proxy, attempts, exchange) resumed at each upstream event, the cache's lookup of a key it
will pass by anyway, and the send wrappers (bench/README.md, "Session 5").
Nginx answers the same request with two reads and two writes.  The express lane does what the
full path does for the common case, synchronously, from the callbacks that already run: the
listener's end of the request head and the upstream connection's data events.

How it stays the full path's answer.  It calls the same functions in the same order, and
gives anything it does not handle back before it matters:

1. ``start`` (from the HTTP/1.1 listener where uvicorn would start the request's task, or
   from the HTTP/2 connection for a stream that ended with its headers): the request must be
   a bodiless GET or HEAD, pass ``validation.check_request``, and route
   to a proxy route with no middlewares (``RouteHandlers.express``).  On a caching route it
   must be a plain GET that the cache would pass by anyway: its key is hit-for-pass and the
   store has not changed since the full path passed it (``CacheLayer.express_decision``).
   The route's pool must be ready, its chosen server UP with an idle pooled connection.
   Then the request head, built by the proxy's own functions, is written on that connection.
   Otherwise the request takes the full path (nothing was sent), which starts from what the
   lane already did: the validation and routing (``ROUTED_SCOPE_KEY``) and the server choice,
   so the round robin moves once per request (a ``Handoff`` without a connection).
2. ``advance`` (from the upstream connection, ``UpstreamConnection.watch``): a final
   response below 500 whose body is complete and at most 64 KiB is answered with the
   fields ``ClientSend`` adds (``headers.response_fields``) through the listener's own
   ``GatewayCycle.respond`` (over HTTP/2 the stream's ``respond``), so the bytes are the
   full path's; the connection goes back to the pool, the server's health hears a success,
   the access log and metrics get the request.
   Anything else (an error, a read timeout, a 1xx, a 5xx, a large or streamed body, a client
   that stopped reading or whose HTTP/2 window is too small for the body) becomes a
   ``Handoff``: the request's task is started after all, and the proxy's first attempt
   carries on with this exchange (retries, health reports, stale answers and error pages as
   usual).

What the lane needs of the client's side, the HTTP/1.1 listener and the HTTP/2 connection
both have: ``start_full_path``, ``express_blocked``, ``abort_response`` and ``loop``.

Off in trace mode and with ``server_timing`` (which describe the full path).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from gateway.access_log import Exchange
from gateway.admin.metrics import Labels
from gateway.cache.decisions import Decision
from gateway.errors import GatewayError
from gateway.handlers.proxy import (
    HANDOFF_SCOPE_KEY,
    Handoff,
    final_response_headers,
    request_head,
    small_body,
)
from gateway.headers import response_fields
from gateway.request import Request
from gateway.routing import Route
from gateway.upstream.connection import UpstreamConnection
from gateway.validation import RequestFacts, check_request

if TYPE_CHECKING:
    from gateway.app import GatewayApp, RouteHandlers
    from gateway.config import UpstreamServer
    from gateway.health import ServerHealth
    from gateway.upstream.group import Upstream
    from gateway.upstream.pool import ConnectionPool

log = logging.getLogger("gateway.express")

# A request the lane validated and routed but left to the full path: (app, facts, (route,
# handlers)), which ``GatewayApp`` uses instead of doing both again.
ROUTED_SCOPE_KEY = "gateway.routed"


async def _no_body() -> Any:  # pragma: no cover - never called: express requests have none
    raise AssertionError("an express request has no body to receive")


class ExpressLane:
    """One app's express lane (see the module docstring)."""

    def __init__(self, app: GatewayApp) -> None:
        self.app = app
        self.disabled = False

    def fail(self) -> None:
        """Stop taking requests (a bug, logged once with its traceback): the full path
        answers from now on."""
        log.exception("the express lane is turned off after an error; the full path answers")
        self.disabled = True

    def start(self, cycle: Any, protocol: Any, asgi_app: Any) -> bool:
        """Take the request of ``cycle`` (its scope complete, no task yet) if it qualifies
        and write it upstream; False: the listener starts the full path as usual."""
        if self.disabled:
            return False
        scope = cycle.scope
        method = scope["method"]
        if (
            (method != "GET" and method != "HEAD")
            or (scope["http_version"] != "1.1" and scope["http_version"] != "2")
            or "gateway.target" in scope
            or "gateway.upgrade" in scope
        ):
            return False
        app = self.app
        try:
            facts = check_request(scope, app.hosts)
        except GatewayError:
            return False  # the full path answers the error
        found = app.router.match(facts.hostname, scope["path"])
        if found is None:
            return False
        if self._take(cycle, protocol, asgi_app, facts, *found):
            return True
        # The full path starts from here rather than validating and routing again.
        scope[ROUTED_SCOPE_KEY] = (app, facts, found)
        return False

    def _take(
        self,
        cycle: Any,
        protocol: Any,
        asgi_app: Any,
        facts: RequestFacts,
        route: Route,
        handlers: RouteHandlers,
    ) -> bool:
        if not handlers.express or facts.content_length is not None or facts.chunked:
            return False
        app, scope = self.app, cycle.scope
        method = scope["method"]
        decision: Decision | None = None
        if route.cache and app.cache is not None:
            if method != "GET":
                return False
            decision = app.cache.express_decision(scope, facts.host)
            if decision is None:
                return False
        upstream = app.proxy.upstreams[route.upstream]  # type: ignore[index]
        if not upstream.ready.is_set():
            return False
        try:
            server = upstream.choose()
        except GatewayError:
            return False
        exchange = Exchange(scope)
        exchange.request_id = app.request_id(scope)
        request = Request(scope, _no_body, cycle.send, facts, route, exchange)
        pool = upstream.pools[server]
        health = upstream.health[server]
        conn = pool.take_idle(protocol.loop.time()) if health.is_up else None
        if conn is None:
            # The full path connects (or tries a DOWN server) with this choice, so that the
            # round robin is not advanced twice for one request.
            scope[HANDOFF_SCOPE_KEY] = Handoff(upstream, server, None, 0.0, exchange)
            return False
        target = route.upstream_target(scope["raw_path"], scope["query_string"])
        head = request_head(method, target, app.proxy.upstream_headers(request))
        exchange.upstream = server.address
        express = Express(self, cycle, protocol, asgi_app, request, upstream, server, pool, conn)
        express.decision = decision
        express.health = health
        express.labels = handlers.labels
        try:
            conn.start(head, head_request=method == "HEAD", has_body=False)
        except GatewayError:
            conn.close()  # closed under us since it was pooled: the full path reconnects
            scope[HANDOFF_SCOPE_KEY] = Handoff(upstream, server, None, 0.0, exchange)
            return False
        pool.in_flight += 1
        conn.watch(express.advance)
        return True


class Express:
    """One request on the express lane, from the upstream's first event to its answer."""

    __slots__ = (
        "lane",
        "cycle",
        "protocol",
        "asgi_app",
        "request",
        "upstream",
        "server",
        "pool",
        "conn",
        "started",
        "decision",
        "labels",
        "health",
    )

    def __init__(
        self,
        lane: ExpressLane,
        cycle: Any,
        protocol: Any,
        asgi_app: Any,
        request: Request,
        upstream: Upstream,
        server: UpstreamServer,
        pool: ConnectionPool,
        conn: UpstreamConnection,
    ) -> None:
        self.lane = lane
        self.cycle = cycle
        self.protocol = protocol
        self.asgi_app = asgi_app
        self.request = request
        self.upstream = upstream
        self.server = server
        self.pool = pool
        self.conn = conn
        self.started = time.perf_counter()  # the request head goes upstream next
        self.decision: Decision | None = None
        self.labels: Labels = ("", "")
        self.health: ServerHealth | None = None  # the server's, looked up once in ``_take``

    def advance(self) -> None:
        """The upstream exchange moved on: answer, wait, or hand over.  Called from the
        upstream connection's callbacks, so nothing may escape: a bug here would leave the
        client waiting."""
        try:
            self._advance()
        except Exception:  # noqa: BLE001 - see above
            exchange = self.request.exchange
            log.exception("%s %s: express lane failed", *exchange.line)
            if self.conn.watching:
                self.hand_over()  # nothing reached the client: the full path answers
            elif not self.cycle.response_complete:
                self.protocol.abort_response(self.cycle)  # a truncated one must not look whole

    def _advance(self) -> None:
        conn = self.conn
        head = conn.head
        if conn.failed or conn.interim_pending:
            self.hand_over()  # a 1xx (also one read with the final head) is the full path's
        elif head is None:
            return
        elif head.status >= 500 or conn.switched:
            self.hand_over()  # health reports, stale-if-error: the full path's
        elif conn.response_complete:
            if self.protocol.express_blocked(self.cycle, conn.buffered):
                self.hand_over()  # the full path waits for the client to read first
            else:
                self.answer()
        elif not small_body(head.headers):
            self.hand_over()  # streamed with back-pressure by the full path

    def hand_over(self) -> None:
        """Start uvicorn's task after all; the proxy's first attempt carries on with this
        exchange (``Handoff``)."""
        self.conn.unwatch()
        self.pool.in_flight -= 1
        request = self.request
        request.scope[HANDOFF_SCOPE_KEY] = Handoff(
            self.upstream, self.server, self.conn, self.started, request.exchange
        )
        self.protocol.start_full_path(self.cycle, self.asgi_app)

    def answer(self) -> None:
        conn, request = self.conn, self.request
        head = conn.head
        assert head is not None
        status = head.status
        exchange = request.exchange
        exchange.upstream_seconds = time.perf_counter() - self.started
        headers = final_response_headers(head)
        body = conn.take_body()
        conn.unwatch()
        # The connection is free for the next request first: writing the response may start
        # a pipelined one at once (uvicorn's on_response_complete).
        self.pool.in_flight -= 1
        self.pool.release(conn)
        if self.health is None or not self.health.is_up:
            self.upstream.report_success(self.server)  # a DOWN server answered: UP again
        app = self.lane.app
        if self.decision is not None:
            assert app.cache is not None
            headers = app.cache.pass_headers(headers, self.decision, status)
            exchange.cache = "MISS"
        # What ClientSend does for the two messages of the full path (the lane is off with
        # Server-Timing).
        headers = response_fields(exchange, status, headers, app.extra_headers)
        exchange.bytes_sent += len(body)
        try:
            self.cycle.respond(status, headers, body)
        except Exception:  # noqa: BLE001 - uvicorn's answer to an app failing mid-response
            log.exception("%s %s: writing the response failed", *exchange.line)
            exchange.aborted = True
            self.protocol.abort_response(self.cycle)  # as after an app's failure
        app.access_log.write(exchange)
        app.metrics.observe(exchange, self.labels)
        app.metrics.express += 1
