"""The Starlette application: start-up and shutdown, the route table, error mapping.

``create_app(settings, worker=i)`` is what each worker process serves.  Start-up migrates the
database, loads the JWT secret and opens the connection pool; the endpoints find those in
``request.app.state.services``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.config import Settings

from . import db as database
from . import passwords
from .endpoints import auth, random_array, service, users
from .errors import APIError, error_response, http_exception_response
from .mail import Mailer, public_base_url
from .middleware import BodySizeLimit, ErrorBoundary, NoStoreByDefault
from .signing_key import load_signing_key
from .state import Services
from .tokens import TokenCodec

Endpoint = Callable[[Request], Awaitable[Response]]


def by_method(handlers: dict[str, Endpoint]) -> Endpoint:
    """One route for several methods, so a 405 lists all of them in Allow."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return dispatch


ROUTES = [
    Route("/register", auth.register, methods=["POST"]),
    Route("/user_confirm/{user_id:int}", auth.confirm_email, methods=["GET"]),
    Route("/login", auth.login, methods=["POST"]),
    Route("/refresh", auth.refresh, methods=["POST"]),
    Route("/logout", auth.logout, methods=["POST"]),
    Route(
        "/user/{user_id:int}",
        by_method({"GET": users.get_user, "DELETE": users.delete_user}),
        methods=["GET", "DELETE"],
    ),
    Route("/users", users.list_users, methods=["GET"]),
    Route("/user", users.create_user, methods=["POST"]),
    Route("/generate_random_array", random_array.generate_random_array, methods=["POST"]),
    Route("/health", service.health, methods=["GET"]),
    Route("/status", service.status, methods=["GET"]),
    Route("/openapi.json", service.openapi, methods=["GET"]),
]


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return http_exception_response(exc)


def json_api(
    routes: list[Route], lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]]
) -> Starlette:
    """A Starlette app with the demo services' common shape: every error a JSON body with a
    ``message``, ``Cache-Control: no-store`` unless an endpoint says otherwise, the body
    size limit, and no trailing-slash redirects."""
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(ErrorBoundary),
            Middleware(NoStoreByDefault),
            Middleware(BodySizeLimit),
        ],
        exception_handlers={APIError: _api_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    # A trailing-slash redirect would be built from the client's Host header; answer 404.
    app.router.redirect_slashes = False
    return app


def create_app(
    settings: Settings, *, worker: int = 0, environ: Mapping[str, str] | None = None
) -> Starlette:
    backend = settings.backend

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        key = await asyncio.to_thread(load_signing_key, backend.state_dir, environ)
        # Computed now, so that even the first login for an unknown user costs one hash.
        await asyncio.to_thread(passwords.dummy_hash)
        db = database.connect(backend.database)
        await db.open()
        try:
            app.state.services = Services(
                settings=backend,
                db=db,
                tokens=TokenCodec(
                    key,
                    access_ttl=backend.access_token_ttl,
                    refresh_ttl=backend.refresh_token_ttl,
                ),
                mailer=Mailer(backend.outbox, backend.smtp_host, backend.smtp_port),
                public_url=public_base_url(settings),
                worker=worker,
            )
            yield
        finally:
            await db.close()

    return json_api(ROUTES, lifespan)
