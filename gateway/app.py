"""``GatewayApp``: the HTTPS listener's ASGI app, which owns every request from start to end.

Theory of operation.  For each request:

1. ``validation.check_request`` refuses what a proxy must refuse (ambiguous framing, a Host
   we do not serve) and says what it learnt (host, body framing);
2. the ``Router`` picks the route by Host and path, and with it the route's handler: a
   ``ProxyHandler`` (perhaps wrapped by the cache), a ``StaticHandler`` or a
   ``RedirectHandler``; a WebSocket upgrade on a proxy route goes to the ``WebSocketHandler``;
3. the handler answers through ``ClientSend``, the one outer ``send`` wrapper: it adds the
   gateway's own response headers (Via, HSTS) and records status, bytes and whether the
   response started, for the access log and for the error handling below;
4. a ``GatewayError`` becomes the client's error response (``errors`` decides the status),
   or, once the response has started, an aborted connection; the access log gets one line.

Wrappers (the cache, the middlewares) wrap a handler and may hand it a copy of the request
with their own ``send``: they see the handler's messages before ``ClientSend`` does, so what
they store or transform never contains the gateway's own headers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.access_log import AccessLog, Exchange
from gateway.asgi import Message, Receive, Scope, Send
from gateway.cache.layer import CacheLayer
from gateway.config import RouteSettings, Settings
from gateway.errors import (
    ClientDisconnected,
    ContentTooLarge,
    GatewayError,
    NoRouteMatched,
    error_response,
)
from gateway.handlers.proxy import ProxyHandler
from gateway.handlers.redirect import RedirectHandler
from gateway.handlers.static import StaticHandler
from gateway.handlers.websocket import WebSocketHandler
from gateway.headers import VIA, Headers
from gateway.request import Handler, Request
from gateway.routing import Route, Router
from gateway.upstream.group import Upstream
from gateway.validation import HostPolicy, check_request

log = logging.getLogger("gateway.app")


class ClientSend:
    """The ``send`` every handler answers through (see the module docstring, step 3)."""

    __slots__ = ("send", "exchange", "extra_headers")

    def __init__(self, send: Send, exchange: Exchange, extra_headers: Headers) -> None:
        self.send = send
        self.exchange = exchange
        self.extra_headers = extra_headers

    async def __call__(self, message: Message) -> None:
        exchange = self.exchange
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            exchange.response_started = True
            # A new list: the handler's may be a stored cache entry's.
            message["headers"] = message["headers"] + self.extra_headers
        else:
            exchange.bytes_sent += len(message.get("body", b""))
        await self.send(message)


@dataclass(frozen=True, slots=True)
class RouteHandlers:
    """What a route does with a request, and with a WebSocket upgrade (None: no tunnels)."""

    http: Handler
    websocket: Handler | None = None


class GatewayApp:
    def __init__(self, settings: Settings, upstreams: dict[str, Upstream]) -> None:
        gateway = settings.gateway
        self.settings = settings
        self.hosts = HostPolicy.from_hostnames(gateway.hostnames)
        self.max_body = gateway.max_body_bytes
        extra: Headers = [(b"via", VIA)]
        if gateway.hsts_header:
            extra.append((b"strict-transport-security", gateway.hsts_header.encode()))
        self.extra_headers = extra
        self.access_log = AccessLog(enabled=gateway.access_log)
        self.proxy = ProxyHandler(settings, upstreams)
        self.websocket = WebSocketHandler(settings, self.proxy)
        self.cache = CacheLayer(settings.cache) if settings.cache.enabled else None
        self.router: Router[RouteHandlers] = Router(
            (Route.from_settings(r), self._handlers(r)) for r in settings.routes
        )

    def _handlers(self, settings: RouteSettings) -> RouteHandlers:
        if settings.static is not None:
            return RouteHandlers(StaticHandler(settings.static, settings.static_cache_control))
        if settings.redirect is not None:
            return RouteHandlers(
                RedirectHandler(settings.redirect, self.settings.gateway.redirect_status)
            )
        http: Handler = self.proxy
        if self.cache is not None and settings.cache:
            http = self.cache.wrap(self.proxy.forward)
        return RouteHandlers(http, self.websocket)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        exchange = Exchange(scope)
        client_send = ClientSend(send, exchange, self.extra_headers)
        try:
            facts = check_request(scope, self.hosts)
            found = self.router.match(facts.hostname, scope["path"])
            if found is None:
                raise NoRouteMatched(f"no route matches {facts.hostname}{scope['path']}")
            route, handlers = found
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
        except ClientDisconnected:
            exchange.status = ClientDisconnected.status
        except GatewayError as exc:
            if exchange.response_started:
                # Too late for an error page: end the connection so the client sees a
                # truncated response rather than a complete-looking one.
                log.warning("%s %s: %s after the response started", *exchange.line, exc.message)
                exchange.aborted = True
            else:
                await self._send_error(client_send, exc, exchange)
        finally:
            self.access_log.write(exchange)

    async def _send_error(self, send: ClientSend, exc: GatewayError, exchange: Exchange) -> None:
        if exc.status >= 500:
            log.warning("%s %s -> %d: %s", *exchange.line, exc.status, exc.message)
        headers, body = error_response(exc.status, exc.message, exc.response_headers())
        if exc.close_connection:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
