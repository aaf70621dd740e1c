"""The admin API and dashboard: a Starlette app over a ``source`` of the gateway's state.

The source answers for the whole gateway (``server.LocalSource`` for one process,
``runtime.control.WorkerPool`` for several workers); this module only shapes HTTP answers:

======================  ===========================================================
GET /                   the dashboard (``static/index.html``; it polls /api/overview)
GET /api/overview       everything the dashboard shows, in one answer
GET /api/upstreams      pools and servers: state UP/DOWN/DRAINING, last check, failures...
GET /api/routes         the routes of the running config
GET /api/certificates   names, not_after (RFC 3339), issuer, source
GET /api/cache          entries, bytes, hits, misses; DELETE ?prefix=/path purges
POST /api/reload        200 {reloaded: true}; 422 {message, errors} (nothing changed)
GET /metrics            Prometheus text format (``metrics.render``)
GET /openapi.json       this API described
======================  ===========================================================

With ``[admin] htpasswd`` every request needs Basic credentials of that file (bcrypt or
argon2id lines, checked in a thread; the file is re-read when it changes).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.admin.metrics import CONTENT_TYPE, render
from gateway.admin.openapi import OPENAPI
from gateway.runtime.reload import ReloadError

log = logging.getLogger("gateway.admin")
STATIC = Path(__file__).parent / "static"
REALM = "pygateway admin"


class Source(Protocol):
    async def view(self) -> dict[str, Any]: ...
    async def purge(self, prefix: str) -> int: ...
    async def reload(self) -> list[str]: ...


def _certificates(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in cert.items() if k != "not_after_epoch"} for cert in view["certificates"]
    ]


def build_app(source: Source, htpasswd: Path | None = None) -> Starlette:
    async def dashboard(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def overview(request: Request) -> Response:
        view = await source.view()
        view["certificates"] = _certificates(view)
        return JSONResponse(view, headers={"cache-control": "no-store"})

    async def upstreams(request: Request) -> Response:
        return JSONResponse((await source.view())["upstreams"])

    async def routes(request: Request) -> Response:
        return JSONResponse((await source.view())["routes"])

    async def certificates(request: Request) -> Response:
        return JSONResponse(_certificates(await source.view()))

    async def cache(request: Request) -> Response:
        if request.method == "DELETE":
            prefix = request.query_params.get("prefix", "")
            if not prefix.startswith("/"):
                return JSONResponse(
                    {"message": "give the path prefix to purge: DELETE /api/cache?prefix=/path"},
                    status_code=400,
                )
            purged = await source.purge(prefix)
            log.info("cache purge of %s: %d entries", prefix, purged)
            return JSONResponse({"purged": purged, "prefix": prefix})
        return JSONResponse((await source.view())["cache"])

    async def reload(request: Request) -> Response:
        try:
            warnings = await source.reload()
        except ReloadError as exc:
            return JSONResponse(
                {
                    "message": "the configuration is invalid; nothing was changed",
                    "errors": exc.errors,
                },
                status_code=422,
            )
        return JSONResponse({"reloaded": True, "warnings": warnings})

    async def metrics(request: Request) -> Response:
        return Response(render(await source.view()), media_type=CONTENT_TYPE)

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    middleware = [Middleware(BasicAuthGate, htpasswd=htpasswd)] if htpasswd else []
    return Starlette(
        routes=[
            Route("/", dashboard),
            Route("/api/overview", overview),
            Route("/api/upstreams", upstreams),
            Route("/api/routes", routes),
            Route("/api/certificates", certificates),
            Route("/api/cache", cache, methods=["GET", "DELETE"]),
            Route("/api/reload", reload, methods=["POST"]),
            Route("/metrics", metrics),
            Route("/openapi.json", openapi),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=middleware,
    )


class BasicAuthGate:
    """Every admin request needs Basic credentials from the htpasswd file."""

    def __init__(self, app: ASGIApp, htpasswd: Path) -> None:
        from gateway.middleware.basic_auth import UserFile

        self.app = app
        self.users = UserFile(htpasswd)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or await self._allowed(scope):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"message": "authentication required (the [admin] htpasswd file's users)"},
            status_code=401,
            headers={"www-authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
        )
        await response(scope, receive, send)

    async def _allowed(self, scope: Scope) -> bool:
        from gateway.middleware.htpasswd import check_user, parse_basic_credentials

        users = self.users
        users.refresh()
        authorization = dict(scope["headers"]).get(b"authorization")
        if authorization is None:
            return False
        digest = hashlib.sha256(authorization).digest()
        if users.remembered(digest) is not None:
            return True
        credentials = parse_basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        table, decoy = users.users, users.decoy
        if await asyncio.to_thread(check_user, table, user, password, decoy):
            if users.users is table:
                users.remember(digest, user)
            return True
        client = scope.get("client")
        log.warning("admin: wrong credentials for %r from %s", user, client[0] if client else "?")
        return False
