"""Operational endpoints: /health (for the gateway's checks), /status and /openapi.json."""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..db import DatabaseUnavailable
from ..openapi import openapi_document
from ..schemas import HealthResponse, Message
from ..state import services


async def health(request: Request) -> JSONResponse:
    s = services(request)
    try:
        await s.db.ping()
    except DatabaseUnavailable as exc:
        body = HealthResponse(
            status="error",
            database="unreachable",
            worker=s.worker,
            pid=os.getpid(),
            message=exc.message,
        )
        return JSONResponse(body.model_dump(), status_code=503)
    body = HealthResponse(status="ok", database="ok", worker=s.worker, pid=os.getpid())
    return JSONResponse(body.model_dump(exclude_none=True))


async def status(request: Request) -> JSONResponse:
    return JSONResponse(Message(message="API is up and running").model_dump())


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document())
