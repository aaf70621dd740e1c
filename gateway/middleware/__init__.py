"""Route middlewares, Traefik-style: named ``[middlewares.NAME]`` tables that a route lists.

Each type is a plain class built from its table (``MiddlewareSettings``) and the whole
``Settings``; ``wrap(handler)`` returns a handler that does its part and calls the inner one
(perhaps with a copy of the request carrying its own ``send``, to see the response).  The
route's list is applied first-listed-outermost by ``GatewayApp._handlers``; those with
``applies_to_websocket`` wrap the route's WebSocket handler too (a tunnel has no response
body to compress, but must be authenticated and counted).

A type that holds something outside the process (``rate_limit``'s Redis client) has an
``aclose`` coroutine method; ``close_middlewares`` calls it once the app that built the
instances serves no more requests (a reload's clean-up).

Implementations are chosen from a name -> import-string table, as uvicorn chooses its
protocols, so a type's dependencies (brotli, bcrypt, ...) load only when a config uses it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Protocol

from gateway.config import MiddlewareSettings, Settings
from gateway.request import Handler

MIDDLEWARES = {
    "compress": "gateway.middleware.compress:Compress",
    "basic_auth": "gateway.middleware.basic_auth:BasicAuth",
    "rate_limit": "gateway.middleware.rate_limit:RateLimit",
    "headers": "gateway.middleware.headers:HeaderRules",
}


class Middleware(Protocol):
    applies_to_websocket: bool

    def wrap(self, handler: Handler) -> Handler: ...


class MiddlewareFactory(Protocol):
    def __call__(self, config: MiddlewareSettings, settings: Settings) -> Middleware: ...


def middleware_class(kind: str) -> MiddlewareFactory:
    module, _, name = MIDDLEWARES[kind].partition(":")
    factory: MiddlewareFactory = getattr(importlib.import_module(module), name)
    return factory


def build_middlewares(settings: Settings) -> dict[str, Middleware]:
    """One instance per ``[middlewares.NAME]`` some route uses (routes share it, and with it
    state such as a rate limit's buckets)."""
    used = {name for route in settings.routes for name in route.middlewares}
    return {
        name: middleware_class(config.type)(config, settings)
        for name, config in settings.middlewares.items()
        if name in used
    }


async def close_middlewares(middlewares: Iterable[Middleware]) -> None:
    """Release what the instances hold outside the process (see the module docstring)."""
    for middleware in middlewares:
        aclose = getattr(middleware, "aclose", None)
        if aclose is not None:
            await aclose()
