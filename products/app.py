"""The products service's Starlette app: routes, start-up, and the backend's error shape."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from backend import db as database
from backend.app import by_method, json_api
from backend.auth import authenticate_with, require_admin
from backend.errors import (
    NotFound,
    ValidationFailed,
)
from backend.inputs import query_int, read_json
from backend.schemas import Message, parse
from backend.signing_key import load_signing_key
from backend.tokens import MAX_USER_ID, TokenCodec
from gateway.config import BackendSettings

from . import catalogue
from .openapi import openapi_document
from .schemas import ProductIn, ProductPatch, ProductsHealth

NOT_FOUND = "Product not found."


@dataclass(slots=True)
class State:
    db: database.Database  # the products
    accounts: database.Database  # the backend's: sessions and roles, read only
    tokens: TokenCodec


def _state(request: Request) -> State:
    found = request.app.state.products
    assert isinstance(found, State)
    return found


def _product_id(request: Request) -> int:
    product_id = request.path_params["product_id"]
    assert isinstance(product_id, int)
    if not 0 < product_id <= MAX_USER_ID:  # ids the databases cannot hold do not exist
        raise NotFound(NOT_FOUND)
    return product_id


async def _admin(request: Request, s: State) -> None:
    require_admin(await authenticate_with(request, s.tokens, s.accounts))


async def list_products(request: Request) -> JSONResponse:
    s = _state(request)
    limit = query_int(request, "limit", default=100, low=1, high=1000)
    offset = query_int(request, "offset", default=0, low=0, high=2**62)
    page = await s.db.read(lambda conn: catalogue.list_page(conn, limit=limit, offset=offset))
    return JSONResponse([product.model_dump() for product in page])


async def create_product(request: Request) -> JSONResponse:
    s = _state(request)
    await _admin(request, s)
    body = parse(ProductIn, await read_json(request))
    product = await s.db.write(lambda conn: catalogue.create(conn, **body.model_dump()))
    return JSONResponse(product.model_dump(), status_code=201)


async def get_product(request: Request) -> JSONResponse:
    s = _state(request)
    product_id = _product_id(request)
    product = await s.db.read(lambda conn: catalogue.get(conn, product_id))
    if product is None:
        raise NotFound(NOT_FOUND)
    return JSONResponse(product.model_dump())


async def update_product(request: Request) -> JSONResponse:
    s = _state(request)
    await _admin(request, s)
    product_id = _product_id(request)
    changes = parse(ProductPatch, await read_json(request)).model_dump(exclude_unset=True)
    nulls = {field: ["Must not be null."] for field, value in changes.items() if value is None}
    if nulls:
        raise ValidationFailed(nulls, message="Invalid input: a field is null")
    if not changes:
        message = "Send at least one of name, description, price, stock."
        raise ValidationFailed({"body": [message]}, message=message)
    product = await s.db.write(lambda conn: catalogue.update(conn, product_id, changes))
    if product is None:
        raise NotFound(NOT_FOUND)
    return JSONResponse(product.model_dump())


async def delete_product(request: Request) -> JSONResponse:
    s = _state(request)
    await _admin(request, s)
    product_id = _product_id(request)
    if not await s.db.write(lambda conn: catalogue.delete(conn, product_id)):
        raise NotFound(NOT_FOUND)
    return JSONResponse(Message(message="Product deleted.").model_dump())


async def health(request: Request) -> JSONResponse:
    s = _state(request)
    try:
        await s.db.ping()
    except database.DatabaseUnavailable as exc:
        body = ProductsHealth(
            status="error", database="unreachable", pid=os.getpid(), message=exc.message
        )
        return JSONResponse(body.model_dump(), status_code=503)
    body = ProductsHealth(status="ok", database="ok", pid=os.getpid())
    return JSONResponse(body.model_dump(exclude_none=True))


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(openapi_document())


ROUTES = [
    Route("/products/health", health, methods=["GET"]),
    Route("/products/openapi.json", openapi, methods=["GET"]),
    Route(
        "/products",
        by_method({"GET": list_products, "POST": create_product}),
        methods=["GET", "POST"],
    ),
    Route(
        "/products/{product_id:int}",
        by_method({"GET": get_product, "PATCH": update_product, "DELETE": delete_product}),
        methods=["GET", "PATCH", "DELETE"],
    ),
]


def create_app(
    products_database: Path | str,
    backend: BackendSettings,
    *,
    environ: Mapping[str, str] | None = None,
) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if isinstance(backend.database, Path) and not backend.database.exists():
            # Opening it would create an empty file with the wrong mode, before the backend.
            raise RuntimeError(f"{backend.database}: no such file; start the backend first")
        key = await asyncio.to_thread(load_signing_key, backend.state_dir, environ)
        products = database.connect(products_database, schema=catalogue.SCHEMA)
        accounts = database.connect(backend.database, pool_size=2, migrate=False)
        await products.open()
        try:
            await accounts.open()
            try:
                codec = TokenCodec(
                    key,
                    access_ttl=backend.access_token_ttl,
                    refresh_ttl=backend.refresh_token_ttl,
                )
                app.state.products = State(products, accounts, codec)
                yield
            finally:
                await accounts.close()
        finally:
            await products.close()

    return json_api(ROUTES, lifespan)
