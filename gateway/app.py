"""``GatewayApp``: the HTTPS listener's ASGI app, which owns every request from start to end.

Theory of operation.  For each request:

1. ``validation.check_request`` refuses what a proxy must refuse (ambiguous framing, a Host
   we do not serve) and says what it learnt (host, body framing);
2. the ``Router`` picks the route by Host and path, and with it the route's handler: a
   ``ProxyHandler`` (perhaps wrapped by the cache), a ``StaticHandler`` or a
   ``RedirectHandler``; a WebSocket upgrade on a proxy route goes to the ``WebSocketHandler``;
3. the handler answers through ``ClientSend``, the one outer ``send`` wrapper: it adds the
   gateway's own response headers (Via, HSTS, X-Request-ID, Server-Timing) and records
   status, bytes and whether the response started, for the access log and for the error
   handling below;
4. a ``GatewayError`` becomes the client's error response (``errors`` decides the status),
   or, once the response has started, an aborted connection; the access log gets one line.

Wrappers (the cache, the middlewares) wrap a handler and may hand it a copy of the request
with their own ``send``: they see the handler's messages before ``ClientSend`` does, so what
they store or transform never contains the gateway's own headers.  A route's middlewares
(``gateway.middleware``) wrap its handler in the order the route lists them; a route without
any runs its handler unwrapped.

Every request gets an X-Request-ID (a trusted proxy's is kept, else a new one): sent upstream,
returned to the client, in the access log and in every error body the gateway makes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from random import getrandbits as _random_bits

from gateway.access_log import AccessLog, Exchange
from gateway.admin.metrics import NO_ROUTE, Labels, Metrics
from gateway.asgi import Message, Receive, Scope, Send
from gateway.cache.hot import HotHits
from gateway.cache.layer import CacheLayer
from gateway.config import RouteSettings, Settings
from gateway.errors import (
    ClientDisconnected,
    ContentTooLarge,
    GatewayError,
    NoRouteMatched,
    error_response,
)
from gateway.express import ROUTED_SCOPE_KEY, ExpressLane
from gateway.handlers.proxy import HANDOFF_SCOPE_KEY, Handoff, ProxyHandler
from gateway.handlers.redirect import RedirectHandler
from gateway.handlers.static import StaticHandler
from gateway.handlers.websocket import WebSocketHandler
from gateway.headers import VIA, Headers, TrustedProxies, response_fields
from gateway.http1_cycle import STATUS_LINE
from gateway.middleware import build_middlewares
from gateway.request import Handler, Request
from gateway.routing import Route, Router
from gateway.tracing import (
    TRACE_SCOPE_KEY,
    Trace,
    app_trace,
    emit,
    route_text,
    trace_title,
    traced_middleware,
    validation_text,
)
from gateway.upstream.group import Upstream
from gateway.validation import ALLOWED_METHODS, HostPolicy, answers_options_itself, check_request

log = logging.getLogger("gateway.app")


class ClientSend:
    """The ``send`` every handler answers through (see the module docstring, step 3)."""

    __slots__ = ("send", "exchange", "extra_headers", "server_timing")

    def __init__(
        self, send: Send, exchange: Exchange, extra_headers: Headers, server_timing: bool = False
    ) -> None:
        self.send = send
        self.exchange = exchange
        self.extra_headers = extra_headers
        self.server_timing = server_timing

    def __call__(self, message: Message) -> Awaitable[None]:
        # Not a coroutine itself: it returns the listener's send() awaitable, so a response
        # message costs no extra coroutine frame on the way out (the hot path).
        if message["type"] == "http.response.start":
            message["headers"] = response_fields(
                self.exchange,
                message["status"],
                message["headers"],
                self.extra_headers,
                self.server_timing,
            )
        else:
            self.exchange.bytes_sent += len(message.get("body", b""))
        return self.send(message)


def new_request_id() -> str:
    """32 hex digits, like Nginx's ``$request_id``: unique (Mersenne Twister, reseeded per
    process), not secret; 0.2 µs where ``os.urandom(16).hex()`` takes 0.7 (hot path)."""
    return _random_bits(128).to_bytes(16).hex()


def request_id(scope: Scope, trusted: TrustedProxies) -> str:
    """A trusted proxy's X-Request-ID (sane ones only: it ends up in logs), else a new one
    of 32 hex digits, like Nginx's ``$request_id``."""
    if trusted:
        client = scope.get("client")
        if client and trusted.contains(client[0]):
            for name, value in scope["headers"]:
                if name == b"x-request-id" and 0 < len(value) <= 200:
                    text: str = value.decode("latin-1")
                    if text.isascii() and text.isprintable() and " " not in text:
                        return text
    return new_request_id()


@dataclass(frozen=True, slots=True)
class RouteHandlers:
    """What a route does with a request, and with a WebSocket upgrade (None: no tunnels)."""

    http: Handler
    websocket: Handler | None = None
    labels: Labels = NO_ROUTE  # (route, upstream) for the metrics
    hot: bool = False  # the cache with nothing around it: its fresh hits may be published
    express: bool = False  # a proxy route with no middlewares at all (gateway.express)


def route_labels(route: RouteSettings) -> Labels:
    """The metrics' ``route`` label (``host,host/prefix``) and ``upstream`` label."""
    return ",".join(route.hosts) + route.path_prefix, route.upstream or ""


class GatewayApp:
    def __init__(
        self,
        settings: Settings,
        upstreams: dict[str, Upstream],
        *,
        access_log: AccessLog | None = None,
        cache: CacheLayer | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``access_log``, ``cache`` and ``metrics``: the previous app's, kept by a reload
        (``gateway.runtime.reload``) when their settings did not change."""
        gateway = settings.gateway
        self.settings = settings
        self.hosts = HostPolicy.from_hostnames(gateway.hostnames)
        self.max_body = gateway.max_body_bytes
        extra: Headers = [(b"via", VIA)]
        if gateway.hsts_header:
            extra.append((b"strict-transport-security", gateway.hsts_header.encode()))
        self.extra_headers = extra
        self.access_log = access_log or AccessLog.from_settings(gateway)
        self.metrics = metrics or Metrics()
        self.server_timing = gateway.server_timing
        self.trace = gateway.trace  # gateway.tracing; tested once per request
        self.proxy = ProxyHandler(settings, upstreams)
        self.trusted = self.proxy.trusted
        self.ids_from_proxies = bool(self.trusted)
        self.websocket = WebSocketHandler(settings, self.proxy)
        if cache is None and settings.cache.enabled:
            cache = CacheLayer(settings.cache)
        self.cache = cache
        self.middlewares = build_middlewares(settings)
        # Fresh hits the listeners answer themselves (gateway.cache.hot), where nothing per
        # request could make them differ from this app's answers.
        self.hot: HotHits | None = None
        if cache is not None and not self.trace and not self.server_timing:
            if cache.store.generation() is not None:
                self.hot = HotHits(
                    cache.store, extra, self.access_log, self.metrics, new_request_id, STATUS_LINE
                )
        self.router: Router[RouteHandlers] = Router(
            (Route.from_settings(r), replace(self._handlers(r), labels=route_labels(r)))
            for r in settings.routes
        )
        # Proxied GET/HEADs the HTTP/1.1 listener answers without a task (gateway.express).
        self.express: ExpressLane | None = None
        if not self.trace and not self.server_timing:
            self.express = ExpressLane(self)

    def request_id(self, scope: Scope) -> str:
        """The request's X-Request-ID (see ``request_id``)."""
        return request_id(scope, self.trusted) if self.ids_from_proxies else new_request_id()

    def client_send(self, send: Send, exchange: Exchange) -> ClientSend:
        return ClientSend(send, exchange, self.extra_headers, self.server_timing)

    def _handlers(self, settings: RouteSettings) -> RouteHandlers:
        names = settings.middlewares
        if settings.static is not None:
            handlers = RouteHandlers(StaticHandler(settings.static, settings.static_cache_control))
        elif settings.redirect is not None:
            handlers = RouteHandlers(
                RedirectHandler(settings.redirect, self.settings.gateway.redirect_status)
            )
        elif self.cache is not None and settings.cache:
            # compress goes between the cache and the proxy, whatever its place in the list:
            # the cache then stores each encoding once and a hit costs no compression.
            forward = self.proxy.forward
            outer: list[str] = []
            for name in reversed(names):
                wrap_forward = getattr(self.middlewares[name], "wrap_forward", None)
                if wrap_forward is None:
                    outer.insert(0, name)
                else:
                    forward = wrap_forward(forward)
            names = tuple(outer)
            handlers = RouteHandlers(
                self.cache.wrap(forward),
                self.websocket,
                hot=not names,
                express=not settings.middlewares,
            )
        else:
            handlers = RouteHandlers(self.proxy, self.websocket, express=not names)
        if not names:
            return handlers
        http, websocket = handlers.http, handlers.websocket
        for name in reversed(names):  # the first listed ends up outermost
            middleware = self.middlewares[name]
            if self.trace:
                http = traced_middleware(name, middleware, http)
            else:
                http = middleware.wrap(http)
            if websocket is not None and middleware.applies_to_websocket:
                websocket = middleware.wrap(websocket)
        return RouteHandlers(http, websocket)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        handoff: Handoff | None = scope.get(HANDOFF_SCOPE_KEY)
        if handoff is not None:
            exchange = handoff.exchange  # the express lane's: its X-Request-ID went upstream
        else:
            exchange = Exchange(scope)
            exchange.request_id = self.request_id(scope)
        if self.trace:
            exchange.trace = scope.get(TRACE_SCOPE_KEY) or app_trace(scope)
        client_send = self.client_send(send, exchange)
        labels = NO_ROUTE
        try:
            routed = scope.get(ROUTED_SCOPE_KEY)
            if routed is not None and routed[0] is self:
                facts, found = routed[1], routed[2]  # by the express lane (a GET or HEAD)
            else:
                facts = check_request(scope, self.hosts)
                if exchange.trace is not None:
                    exchange.trace.add(
                        "gateway.validation",
                        validation_text(facts.hostname, facts.content_length, facts.chunked),
                    )
                if answers_options_itself(scope):
                    await self._answer_options(client_send)
                    return
                found = self.router.match(facts.hostname, scope["path"])
            if found is None:
                raise NoRouteMatched(f"no route matches {facts.hostname}{scope['path']}")
            route, handlers = found
            if exchange.trace is not None:
                exchange.trace.add(
                    "gateway.routing",
                    route_text(
                        route,
                        facts.hostname,
                        scope["path"],
                        self.cache is not None and route.cache,
                        handlers.websocket is not None and "gateway.upgrade" in scope,
                    ),
                )
            labels = handlers.labels
            if facts.content_length is not None and facts.content_length > self.max_body:
                raise ContentTooLarge(
                    f"request body of {facts.content_length} bytes is larger than the "
                    f"{self.max_body}-byte limit (max_body_bytes)"
                )
            request = Request(scope, receive, client_send, facts, route, exchange)
            if handlers.websocket is not None and "gateway.upgrade" in scope:
                await handlers.websocket(request)
            else:
                await handlers.http(request)
                if exchange.fresh_hit is not None and handlers.hot and self.hot is not None:
                    self.hot.publish(scope, exchange.fresh_hit, exchange, labels)
        except ClientDisconnected:
            # The listener may have ended the request itself (408: the body stalled).
            exchange.status = scope.get("gateway.closed_status", ClientDisconnected.status)
        except GatewayError as exc:
            if exchange.trace is not None:
                exchange.trace.failed(exc.status, type(exc).__name__, exc.message)
            if exchange.response_started:
                # Too late for an error page: end the connection so the client sees a
                # truncated response rather than a complete-looking one.
                log.warning("%s %s: %s after the response started", *exchange.line, exc.message)
                exchange.aborted = True
            else:
                await self._send_error(client_send, exc, exchange)
        finally:
            if handoff is not None:
                handoff.drop()  # when nothing carried the exchange on
            self.access_log.write(exchange)
            self.metrics.observe(exchange, labels)
            if exchange.trace is not None:
                self._emit_trace(exchange, exchange.trace)

    def _emit_trace(self, exchange: Exchange, trace: Trace) -> None:
        aborted = ", connection aborted" if exchange.aborted else ""
        trace.add(
            "gateway.app",
            f"final status {exchange.status}, {exchange.bytes_sent} body bytes sent{aborted}",
        )
        method, target = exchange.line
        emit(trace, trace_title(method, target, exchange.status, exchange.request_id, trace))

    async def _answer_options(self, send: ClientSend) -> None:
        headers = [(b"allow", ALLOWED_METHODS.encode()), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _send_error(self, send: ClientSend, exc: GatewayError, exchange: Exchange) -> None:
        if exc.status >= 500:
            log.warning("%s %s -> %d: %s", *exchange.line, exc.status, exc.message)
        headers, body = error_response(
            exc.status, exc.message, exc.response_headers(), exchange.request_id
        )
        if exc.close_connection:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
