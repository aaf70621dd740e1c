"""The OpenAPI 3.1 description of the products service (served at /products/openapi.json)."""

from __future__ import annotations

from functools import cache
from typing import Any

from backend.openapi import Operation, build_document
from backend.schemas import Message

from .schemas import ProductIn, ProductOut, ProductPatch, ProductsHealth

PRODUCT_ID = {
    "name": "product_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
PAGE = (
    {
        "name": "limit", "in": "query", "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
    {
        "name": "offset", "in": "query", "required": False,
        "schema": {"type": "integer", "minimum": 0, "default": 0},
    },
)  # fmt: skip

# fmt: off
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET", "/products", "List products (anyone)",
        response=ProductOut, response_is_list=True, errors=(400,), parameters=PAGE,
    ),
    Operation(
        "POST", "/products", "Add a product (admin)",
        status=201, response=ProductOut, request=ProductIn, auth="admin",
        errors=(400, 401, 403, 413, 415),
    ),
    Operation(
        "GET", "/products/{product_id}", "Read a product (anyone)",
        response=ProductOut, errors=(404,), parameters=(PRODUCT_ID,),
    ),
    Operation(
        "PATCH", "/products/{product_id}", "Change some fields of a product (admin)",
        response=ProductOut, request=ProductPatch, auth="admin",
        errors=(400, 401, 403, 404, 413, 415), parameters=(PRODUCT_ID,),
    ),
    Operation(
        "DELETE", "/products/{product_id}", "Delete a product (admin)",
        response=Message, auth="admin", errors=(401, 403, 404), parameters=(PRODUCT_ID,),
    ),
    Operation(
        "GET", "/products/health", "Service and database health",
        response=ProductsHealth, errors=(503,),
    ),
    Operation("GET", "/products/openapi.json", "This document", response=None),
)
# fmt: on


@cache
def openapi_document() -> dict[str, Any]:
    return build_document(
        OPERATIONS,
        title="pygateway demo products service",
        description="Products: anyone reads, admins write (the backend's access tokens). "
        'Prices are decimal strings ("19.99"). Every error body has a `message`; '
        "validation errors add `errors`.",
        error_descriptions={404: "No such product"},
    )
