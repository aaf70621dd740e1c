"""``Request``: one client request as it travels through the gateway, and the handler contract.

The ASGI triple plus what validation and routing established about it.  ``GatewayApp`` builds
one per request and hands it to the route's handler; a wrapper (the cache, a middleware) may
pass on a copy with its own ``send`` (``dataclasses.replace(request, send=...)``).  ``send`` is
already the app's outer wrapper, which adds the gateway's own response headers and records
status and bytes for the access log: handlers only say what the response is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from gateway.access_log import Exchange
from gateway.asgi import Receive, Scope, Send
from gateway.headers import Headers
from gateway.routing import Route
from gateway.validation import RequestFacts


@dataclasses.dataclass(slots=True)
class Request:
    scope: Scope
    receive: Receive
    send: Send
    facts: RequestFacts
    route: Route
    exchange: Exchange

    @property
    def method(self) -> str:
        method: str = self.scope["method"]
        return method

    @property
    def headers(self) -> Headers:
        headers: Headers = self.scope["headers"]
        return headers


# A route's handler (proxy, static, redirect, WebSocket, or one wrapped by the cache or a
# middleware): answers the request through ``request.send``; GatewayError for a failure that
# the app turns into an error response.
Handler = Callable[[Request], Awaitable[None]]

# ``ProxyHandler.forward``: forward ``request`` upstream and stream the response to ``send``
# (the cache passes its own wrapper); ``request_headers``, if given, replace the client's.
Forward = Callable[[Request, Send, Headers | None], Awaitable[None]]
