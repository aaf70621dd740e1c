"""Password hashing: argon2id with OWASP's parameters, off the event loop.

Hashing costs tens of milliseconds of CPU by design, so every call runs in a worker thread
(argon2-cffi releases the GIL) and the event loop keeps serving other requests meanwhile.

A login for an unknown user (or a directory entry without a password) is verified against
``dummy_hash()`` so that it costs the same time as a wrong password: response timing must not
tell which usernames exist.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# OWASP Password Storage Cheat Sheet: argon2id, m=19 MiB, t=2, p=1.
HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    # A new hash when the stored one used weaker parameters than HASHER (rehash on login).
    new_hash: str | None = None
    used_dummy: bool = False


@cache
def dummy_hash() -> str:
    return HASHER.hash(secrets.token_urlsafe(32))


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(HASHER.hash, password)


def verify_sync(stored_hash: str | None, password: str) -> Verification:
    if stored_hash is None:
        try:
            HASHER.verify(dummy_hash(), password)
        except VerificationError:
            pass
        return Verification(ok=False, used_dummy=True)
    try:
        HASHER.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return Verification(ok=False)
    new_hash = HASHER.hash(password) if HASHER.check_needs_rehash(stored_hash) else None
    return Verification(ok=True, new_hash=new_hash)


async def verify_password(stored_hash: str | None, password: str) -> Verification:
    """Check ``password`` against ``stored_hash`` (None: the user does not exist)."""
    return await asyncio.to_thread(verify_sync, stored_hash, password)
