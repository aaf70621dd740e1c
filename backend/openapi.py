"""The OpenAPI 3.1 description of the backend, built from one table of operations.

Request and response schemas come from the pydantic models in ``schemas.py``; a test checks
that every route the app serves appears here and the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .schemas import (
    CreateUserRequest,
    DirectoryEntry,
    ErrorBody,
    HealthResponse,
    LoginRequest,
    Message,
    RandomArrayRequest,
    RandomArrayResponse,
    RegisterRequest,
    RegisterResponse,
    TokenResponse,
    UserOut,
)

Auth = Literal["access", "refresh", "admin"]

ERROR_DESCRIPTIONS = {
    400: "Invalid input",
    401: "Missing, invalid, expired or revoked token (WWW-Authenticate: Bearer)",
    403: "Not allowed for this user",
    404: "No such user",
    413: "Request body or sentence too large",
    415: "The body is not JSON",
    429: "Too many failed logins (see Retry-After)",
    503: "The database is unavailable",
}

USER_ID = {
    "name": "user_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    summary: str
    response: type[BaseModel] | None  # None: any JSON object
    status: int = 200
    request: type[BaseModel] | None = None
    auth: Auth | None = None
    errors: tuple[int, ...] = ()
    parameters: tuple[dict[str, Any], ...] = ()
    response_is_list: bool = False


# One operation per block reads better than one argument per line.
# fmt: off
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST", "/register", "Create an account and e-mail a confirmation link",
        status=201, response=RegisterResponse, request=RegisterRequest, errors=(400, 413, 415),
    ),
    Operation(
        "GET", "/user_confirm/{user_id}", "Confirm the e-mail address with the emailed token",
        response=Message, errors=(400, 404),
        parameters=(
            USER_ID,
            {"name": "token", "in": "query", "required": True, "schema": {"type": "string"}},
        ),
    ),
    Operation(
        "POST", "/login", "Log in with username (or e-mail) and password",
        response=TokenResponse, request=LoginRequest, errors=(400, 401, 403, 413, 415, 429),
    ),
    Operation(
        "POST", "/refresh", "Exchange a refresh token for a new token pair",
        response=TokenResponse, auth="refresh", errors=(401,),
    ),
    Operation(
        "POST", "/logout", "Revoke this login's access and refresh tokens",
        response=Message, auth="access", errors=(401,),
    ),
    Operation(
        "GET", "/user/{user_id}", "Read a user (yourself, or anyone as an admin)",
        response=UserOut, auth="access", errors=(401, 403, 404), parameters=(USER_ID,),
    ),
    Operation(
        "DELETE", "/user/{user_id}", "Delete a user (yourself, or anyone as an admin)",
        response=Message, auth="access", errors=(401, 403, 404), parameters=(USER_ID,),
    ),
    Operation(
        "GET", "/users", "List users (admin)",
        response=UserOut, response_is_list=True, auth="admin", errors=(400, 401, 403),
        parameters=(
            {
                "name": "limit", "in": "query", "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            },
            {
                "name": "offset", "in": "query", "required": False,
                "schema": {"type": "integer", "minimum": 0, "default": 0},
            },
        ),
    ),
    Operation(
        "POST", "/user", "Add a name-only user to the directory (admin)",
        status=201, response=DirectoryEntry, request=CreateUserRequest, auth="admin",
        errors=(400, 401, 403, 413, 415),
    ),
    Operation(
        "POST", "/generate_random_array", "500 random floats in [0, 1) and a word count",
        response=RandomArrayResponse, request=RandomArrayRequest, auth="access",
        errors=(400, 401, 413, 415),
    ),
    Operation(
        "GET", "/health", "Worker and database health", response=HealthResponse, errors=(503,)
    ),
    Operation("GET", "/status", "Liveness message", response=Message),
    Operation("GET", "/openapi.json", "This document", response=None),
)
# fmt: on


def _operation(
    op: Operation, ref: dict[str, str], error_descriptions: dict[int, str]
) -> dict[str, Any]:
    def content(model: type[BaseModel] | None, *, is_list: bool = False) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object"}
        if model is not None:
            schema = {"$ref": ref[model.__name__]}
        if is_list:
            schema = {"type": "array", "items": schema}
        return {"application/json": {"schema": schema}}

    responses: dict[str, Any] = {
        str(op.status): {
            "description": "Success",
            "content": content(op.response, is_list=op.response_is_list),
        }
    }
    for status in (*op.errors, 500):
        description = error_descriptions.get(status, "Internal server error")
        responses[str(status)] = {"description": description, "content": content(ErrorBody)}
    operation: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{op.method.lower()}_{op.path.strip('/').replace('/', '_')}".replace(
            "{", ""
        )
        .replace("}", "")
        .replace(".", "_"),
        "responses": responses,
    }
    if op.parameters:
        operation["parameters"] = list(op.parameters)
    if op.request is not None:
        operation["requestBody"] = {"required": True, "content": content(op.request)}
    if op.auth is not None:
        operation["security"] = [{"bearerAuth": []}]
        if op.auth == "refresh":
            operation["description"] = "Send the refresh token (not an access token)."
        elif op.auth == "admin":
            operation["description"] = "Send an access token of an admin."
    return operation


@cache
def openapi_document() -> dict[str, Any]:
    return build_document(
        OPERATIONS,
        title="pygateway demo backend",
        description="Users, authentication and the random-array API. "
        "Every error body has a `message`; validation errors add `errors`.",
    )


def build_document(
    operations: tuple[Operation, ...],
    *,
    title: str,
    description: str,
    error_descriptions: dict[int, str] | None = None,
) -> dict[str, Any]:
    """An OpenAPI 3.1 document for ``operations`` (the products service builds its own)."""
    errors = {**ERROR_DESCRIPTIONS, **(error_descriptions or {})}
    requests = {op.request for op in operations if op.request is not None}
    responses = {op.response for op in operations if op.response is not None} | {ErrorBody}
    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        *((model, "validation") for model in sorted(requests, key=lambda m: m.__name__)),
        *((model, "serialization") for model in sorted(responses, key=lambda m: m.__name__)),
    ]
    keys, definitions = models_json_schema(models, ref_template="#/components/schemas/{model}")
    ref = {model.__name__: schema["$ref"] for (model, _), schema in keys.items()}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, ref, errors)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1.0.0", "description": description},
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
