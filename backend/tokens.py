"""JSON Web Tokens: what the backend signs and what it accepts.  No I/O here.

Three kinds, told apart by the ``type`` claim so none can stand in for another:

=========  ==============================  ======================================
type       lifetime                        used for
=========  ==============================  ======================================
access     ``access_token_ttl`` (15 min)   ``Authorization: Bearer`` on API calls
refresh    ``refresh_token_ttl`` (30 d)    ``POST /refresh`` only
confirm    24 h                            the link in the confirmation e-mail
=========  ==============================  ======================================

Every token is HS256 with claims ``sub`` (the user id, a string as RFC 7519 wants), ``type``,
``jti``, ``iat``, ``nbf``, ``exp`` and ``iss``; access and refresh tokens add ``fam``, the login
session (token family) they belong to.  Decoding pins the algorithm (so ``alg: none`` and
key-confusion tricks fail), requires all of these claims and checks the type.  Whether a token
has been revoked is the database's business (``sessions.py``), not this module's.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt

ALGORITHM = "HS256"
ISSUER = "pygateway-backend"
CONFIRM_TTL = 24 * 3600
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "sub", "type", "jti"]
# SQLite's INTEGER range: a larger id cannot exist, so a token naming one is invalid.
MAX_USER_ID = 2**63 - 1


class TokenType(StrEnum):
    ACCESS = "access"
    REFRESH = "refresh"
    CONFIRM = "confirm"


WRONG_TYPE_MESSAGES = {
    TokenType.ACCESS: "An access token is required.",
    TokenType.REFRESH: "A refresh token is required.",
    TokenType.CONFIRM: "A confirmation token is required.",
}


class InvalidToken(Exception):
    """The token is unusable; the message is safe to show to the client."""


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: int
    type: TokenType
    jti: str
    family: str | None
    issued_at: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    claims: Claims


class TokenCodec:
    def __init__(
        self,
        secret: bytes,
        *,
        access_ttl: int,
        refresh_ttl: int,
        confirm_ttl: int = CONFIRM_TTL,
        issuer: str = ISSUER,
    ) -> None:
        self._secret = secret
        self.issuer = issuer
        self.ttls = {
            TokenType.ACCESS: access_ttl,
            TokenType.REFRESH: refresh_ttl,
            TokenType.CONFIRM: confirm_ttl,
        }

    def issue(
        self,
        type: TokenType,
        user_id: int,
        *,
        family: str | None = None,
        now: float | None = None,
    ) -> IssuedToken:
        if (family is None) != (type is TokenType.CONFIRM):
            raise ValueError("access and refresh tokens need a family, confirm tokens none")
        issued_at = int(time.time() if now is None else now)
        claims = Claims(
            user_id=user_id,
            type=type,
            jti=secrets.token_urlsafe(16),
            family=family,
            issued_at=issued_at,
            expires_at=issued_at + self.ttls[type],
        )
        payload: dict[str, Any] = {
            "sub": str(user_id),
            "type": type.value,
            "jti": claims.jti,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": claims.expires_at,
            "iss": self.issuer,
        }
        if family is not None:
            payload["fam"] = family
        token = jwt.encode(payload, self._secret, algorithm=ALGORITHM)
        return IssuedToken(token, claims)

    def decode(self, token: str, expected: TokenType) -> Claims:
        """Verify ``token`` and return its claims, or raise InvalidToken."""
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("The token has expired.") from None
        except jwt.InvalidTokenError:
            raise InvalidToken("The token is invalid.") from None
        # PyJWT accepts numeric strings ("exp": "1700000000"); RFC 7519 NumericDates are numbers.
        if not all(type(payload[claim]) is int for claim in ("exp", "iat", "nbf")):
            raise InvalidToken("The token is invalid.")
        kind = payload["type"]
        if kind != expected.value:
            raise InvalidToken(WRONG_TYPE_MESSAGES[expected])
        sub, jti, family = payload["sub"], payload["jti"], payload.get("fam")
        if not (isinstance(sub, str) and sub.isascii() and sub.isdigit() and len(sub) <= 19):
            raise InvalidToken("The token is invalid.")
        user_id = int(sub)
        if not 0 < user_id <= MAX_USER_ID or not isinstance(jti, str):
            raise InvalidToken("The token is invalid.")
        if (expected is TokenType.CONFIRM) != (family is None) or (
            family is not None and not isinstance(family, str)
        ):
            raise InvalidToken("The token is invalid.")
        return Claims(
            user_id=user_id,
            type=expected,
            jti=jti,
            family=family,
            issued_at=int(payload["iat"]),
            expires_at=int(payload["exp"]),
        )
