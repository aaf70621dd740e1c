"""Who is calling: bearer tokens checked against their signature and the session store.

The role is read from the database on every request rather than trusted from the token, so
demoting or deleting a user takes effect at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from . import sessions, users
from .db import Connection, Database
from .errors import Forbidden, Unauthorized
from .state import Services
from .tokens import Claims, InvalidToken, TokenCodec, TokenType
from .users import User


@dataclass(frozen=True, slots=True)
class Principal:
    user: User
    claims: Claims


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("Missing bearer token.", invalid_token=False)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Use an Authorization: Bearer <token> header.", invalid_token=False)
    return token


def verified_claims(services: Services, token: str, expected: TokenType) -> Claims:
    try:
        return services.tokens.decode(token, expected)
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from None


async def authenticate(request: Request, services: Services) -> Principal:
    """The caller of an endpoint that needs an access token, or 401."""
    return await authenticate_with(request, services.tokens, services.db)


async def authenticate_with(request: Request, codec: TokenCodec, db: Database) -> Principal:
    """The same for any service that trusts the backend's tokens (the products service):
    the signature with the pinned algorithm, then the session and the role in ``db``."""
    try:
        claims = codec.decode(bearer_token(request), TokenType.ACCESS)
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from None

    async def load(conn: Connection) -> User | None:
        if not await sessions.is_active(conn, claims):
            return None
        return await users.get(conn, claims.user_id)

    user = await db.read(load)
    if user is None:
        raise Unauthorized("The token has been revoked.")
    return Principal(user, claims)


def require_self_or_admin(principal: Principal, user_id: int) -> None:
    if principal.user.id != user_id and not principal.user.is_admin:
        raise Forbidden("You may only access your own account.")


def require_admin(principal: Principal) -> None:
    if not principal.user.is_admin:
        raise Forbidden("This endpoint is for administrators only.")
