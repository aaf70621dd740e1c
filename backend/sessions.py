"""Login sessions (token families) in the database: start, rotate, revoke, check.

A login starts a family: one row in ``token_families`` that every access and refresh token of
that login names in its ``fam`` claim.  Revocation is a property of the row, so it holds in
every worker and across restarts:

* ``POST /refresh`` rotates: the family's ``refresh_jti`` moves to the new refresh token, so the
  old one is spent.  Presenting a spent refresh token again means it was copied; the whole
  family is revoked (RFC 9700 section 4.14.2), including the newer tokens.
* ``POST /logout`` revokes the family: its access and refresh tokens stop working at once.
* Deleting a user deletes its families (ON DELETE CASCADE).
* A token whose family row is missing is refused, so expired rows can simply be pruned.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from .db import Connection
from .tokens import Claims, IssuedToken, TokenCodec, TokenType

log = logging.getLogger("backend.sessions")


@dataclass(frozen=True, slots=True)
class TokenPair:
    access: IssuedToken
    refresh: IssuedToken


def _pair(codec: TokenCodec, user_id: int, family: str, now: float) -> TokenPair:
    return TokenPair(
        access=codec.issue(TokenType.ACCESS, user_id, family=family, now=now),
        refresh=codec.issue(TokenType.REFRESH, user_id, family=family, now=now),
    )


async def start(conn: Connection, codec: TokenCodec, user_id: int, now: float) -> TokenPair | None:
    """Open a family for ``user_id``; None if the user was deleted meanwhile."""
    pair = _pair(codec, user_id, secrets.token_urlsafe(16), now)
    inserted = await conn.execute(
        "INSERT INTO token_families (id, user_id, refresh_jti, created_at, expires_at)"
        " SELECT ?, id, ?, ?, ? FROM users WHERE id = ?",
        (
            pair.access.claims.family,
            pair.refresh.claims.jti,
            now,
            pair.refresh.claims.expires_at,
            user_id,
        ),
    )
    return pair if inserted == 1 else None


async def rotate(
    conn: Connection, codec: TokenCodec, refresh: Claims, now: float
) -> TokenPair | None:
    """Exchange a verified refresh token for a new pair; None if it is no longer valid.

    Must run in a write transaction: the check and the rotation are one step, so of two
    concurrent refreshes with the same token exactly one succeeds.
    """
    row = await conn.fetchone(
        "SELECT refresh_jti, revoked_at FROM token_families WHERE id = ? AND user_id = ?",
        (refresh.family, refresh.user_id),
    )
    if row is None or row["revoked_at"] is not None:
        return None
    if row["refresh_jti"] != refresh.jti:
        log.warning(
            "refresh token reuse for user %d: session revoked (RFC 9700 reuse detection)",
            refresh.user_id,
        )
        await revoke(conn, refresh.family, now)
        return None
    assert refresh.family is not None
    pair = _pair(codec, refresh.user_id, refresh.family, now)
    await conn.execute(
        "UPDATE token_families SET refresh_jti = ?, expires_at = ? WHERE id = ?",
        (pair.refresh.claims.jti, pair.refresh.claims.expires_at, refresh.family),
    )
    return pair


async def revoke(conn: Connection, family: str | None, now: float) -> None:
    await conn.execute(
        "UPDATE token_families SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        (now, family),
    )


async def is_active(conn: Connection, claims: Claims) -> bool:
    """True if the token's family exists, belongs to its subject and is not revoked."""
    row = await conn.fetchone(
        "SELECT 1 FROM token_families WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
        (claims.family, claims.user_id),
    )
    return row is not None


async def prune(conn: Connection, now: float) -> None:
    """Forget families whose last refresh token has expired (their tokens all have)."""
    await conn.execute("DELETE FROM token_families WHERE expires_at < ?", (now,))
