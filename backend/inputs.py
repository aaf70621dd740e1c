"""Reading what a request carries: the JSON body, query integers, path ids, the client address.

Each reader turns bad input into a 4xx (``errors.py``) so no malformed request can reach the
code behind it: wrong media type -> 415, oversized -> 413, not JSON or not an object -> 400.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from .errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from .tokens import MAX_USER_ID

MAX_BODY_BYTES = 1024 * 1024


def is_json_media_type(content_type: str | None) -> bool:
    media = (content_type or "").partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body, parse_constant=_reject_constant)
        # Lone surrogates ("\ud800") parse fine but cannot be stored or sent back as UTF-8.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    return data


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    if not is_json_media_type(request.headers.get("content-type")):
        raise UnsupportedMediaType("Send a JSON body with Content-Type: application/json.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    return decode_json_object(bytes(body))


def query_int(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or not low <= int(raw) <= high:
        message = f"Must be an integer from {low} to {high}."
        raise ValidationFailed({name: [message]}, message=f"Invalid input: {name}: {message}")
    return int(raw)


def path_user_id(request: Request) -> int:
    """The ``{user_id:int}`` path parameter; ids SQLite cannot hold do not exist."""
    user_id = request.path_params["user_id"]
    assert isinstance(user_id, int)
    if not 0 < user_id <= MAX_USER_ID:
        raise NotFound("User not found.")
    return user_id


def client_address(peer: str | None, headers: Mapping[str, str]) -> str:
    """The address to throttle logins by.

    X-Real-IP / X-Forwarded-For are trusted only from a loopback peer, i.e. the gateway in
    front of us, which sets them; anybody else could put anything there.  The gateway appends
    the address it saw last, so the rightmost X-Forwarded-For entry is the one it vouches for.
    """
    if peer is None:
        return "unknown"
    if _is_loopback(peer):
        forwarded = (
            headers.get("x-real-ip") or headers.get("x-forwarded-for", "").rpartition(",")[2]
        )
        candidate = _normalized_ip(forwarded.strip())
        if candidate is not None:
            return candidate
    return _normalized_ip(peer) or peer


def request_client_address(request: Request) -> str:
    return client_address(request.client.host if request.client else None, request.headers)


def _normalized_ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
