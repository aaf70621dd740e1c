"""``ProxyRequest``: one client request as it travels through the gateway.

The ASGI triple plus what validation and routing established about it.  ``ProxyApp`` builds
one per request and hands it to the cache layer and the forwarding code, instead of the same
six values travelling through every signature.
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
class ProxyRequest:
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


# ``ProxyApp._forward``: forward ``request`` upstream and stream the response to ``send`` (the
# cache passes its own wrapper); ``request_headers``, if given, replace the client's headers.
Forward = Callable[[ProxyRequest, Send, Headers | None], Awaitable[None]]
