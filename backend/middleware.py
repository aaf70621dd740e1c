"""ASGI middleware around every request: the 500 safety net, the body cap, no caching.

Pure ASGI (no BaseHTTPMiddleware) so streaming and cancellation behave as in the endpoints.
"""

from __future__ import annotations

import logging

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PayloadTooLarge, error_response, internal_error_response
from .inputs import MAX_BODY_BYTES

log = logging.getLogger("backend")


class HTTPMiddleware:
    """Pure ASGI middleware that acts on HTTP requests only (lifespan passes straight
    through): subclasses implement ``handle``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class ErrorBoundary(HTTPMiddleware):
    """Any exception an endpoint did not turn into an ``APIError`` is a bug: log it with its
    traceback and answer 500 ``{"message": "Internal server error"}``, never a stack trace."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if started:
                raise  # too late for a clean answer; the server drops the connection
            await internal_error_response()(scope, receive, send)


class BodySizeLimit(HTTPMiddleware):
    """413 up front for a declared Content-Length over the limit, whatever the endpoint
    (``inputs.read_json`` also counts the bytes of bodies sent without one)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        super().__init__(app)
        self.limit = limit

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                exc = PayloadTooLarge(f"The request body is larger than {self.limit} bytes.")
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class NoStoreByDefault(HTTPMiddleware):
    """``Cache-Control: no-store`` unless the endpoint chose otherwise: these answers are
    per-user or per-moment, and the gateway in front runs a shared cache."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("cache-control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_header)
