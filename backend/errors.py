"""The backend's exception tree and its one mapping to HTTP responses.

Endpoints raise these; ``app.py`` turns them into JSON here and nowhere else::

    APIError                        status   extra
     ├── BadRequest                 400      malformed JSON, wrong shape, bad token link
     │    └── ValidationFailed      400      errors: {field: [messages]}
     ├── Unauthorized               401      WWW-Authenticate: Bearer
     ├── Forbidden                  403
     ├── NotFound                   404
     ├── PayloadTooLarge            413
     ├── UnsupportedMediaType       415
     ├── TooManyRequests            429      Retry-After
     └── ServiceUnavailable         503      the database is unreachable or stays busy

Every body has a ``message`` string; anything that is not an ``APIError`` is a bug and becomes
a logged 500 ``{"message": "Internal server error"}`` (see ``app.catch_unexpected_errors``).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

INTERNAL_ERROR_MESSAGE = "Internal server error"


class APIError(Exception):
    status = 500

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {"message": self.message}


class BadRequest(APIError):
    status = 400


class ValidationFailed(BadRequest):
    def __init__(self, errors: Mapping[str, list[str]], message: str = "Invalid input.") -> None:
        super().__init__(message)
        self.errors = {field: list(messages) for field, messages in errors.items()}

    def body(self) -> dict[str, object]:
        return {"message": self.message, "errors": self.errors}


class Unauthorized(APIError):
    status = 401

    def __init__(self, message: str, *, invalid_token: bool = True) -> None:
        # RFC 6750 section 3: no error code when the request simply carried no credentials.
        challenge = 'Bearer realm="backend"'
        if invalid_token:
            challenge += ', error="invalid_token"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class Forbidden(APIError):
    status = 403


class NotFound(APIError):
    status = 404


class PayloadTooLarge(APIError):
    status = 413


class UnsupportedMediaType(APIError):
    status = 415


class TooManyRequests(APIError):
    status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class ServiceUnavailable(APIError):
    status = 503


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def http_exception_response(exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route 404, wrong method 405 with its Allow header)."""
    return JSONResponse({"message": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def internal_error_response() -> JSONResponse:
    return JSONResponse({"message": INTERNAL_ERROR_MESSAGE}, status_code=500)
