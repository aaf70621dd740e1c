"""Login throttling: too many failed logins for one username or one client get 429.

Failures are rows in ``login_failures`` (so the limit holds across workers and restarts), keyed
by ``user:<login as typed, lower-cased>`` and ``ip:<client address>``.  The decision itself is
the pure function ``retry_after``.  While a key is throttled the password is not even checked,
so a locked-out attacker learns nothing and burns no CPU.  A successful login clears the
username's failures, not the client's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .db import Connection


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str
    max_failures: int
    window: float  # seconds


PER_USERNAME = Limit("user", max_failures=5, window=300.0)
PER_CLIENT = Limit("ip", max_failures=20, window=300.0)


def retry_after(failures: Sequence[float], limit: Limit, now: float) -> int | None:
    """Whole seconds until one more attempt is allowed, or None if it is allowed now.

    ``failures`` are the failure times in ascending order.
    """
    recent = [t for t in failures if t > now - limit.window]
    excess = len(recent) - limit.max_failures
    if excess < 0:
        return None
    # Once the (excess + 1) oldest failures leave the window, one attempt is allowed again.
    return max(1, math.ceil(recent[excess] + limit.window - now))


class LoginThrottle:
    def __init__(self, limits: tuple[Limit, Limit] = (PER_USERNAME, PER_CLIENT)) -> None:
        self.user_limit, self.client_limit = limits

    def _keys(self, login: str, client: str) -> list[tuple[Limit, str]]:
        return [(self.user_limit, f"user:{login.lower()}"), (self.client_limit, f"ip:{client}")]

    async def retry_after(
        self, conn: Connection, login: str, client: str, now: float
    ) -> int | None:
        waits = []
        for limit, key in self._keys(login, client):
            rows = await conn.fetchall(
                "SELECT at FROM login_failures WHERE key = ? AND at > ? ORDER BY at",
                (key, now - limit.window),
            )
            times = [row[0] for row in rows]
            wait = retry_after(times, limit, now)
            if wait is not None:
                waits.append(wait)
        return max(waits, default=None)

    async def record_failure(self, conn: Connection, login: str, client: str, now: float) -> None:
        await conn.executemany(
            "INSERT INTO login_failures (key, at) VALUES (?, ?)",
            [(key, now) for _, key in self._keys(login, client)],
        )
        await self.prune(conn, now)

    async def clear(self, conn: Connection, logins: Iterable[str]) -> None:
        """Forget the failures of an account after it logged in (by username or e-mail)."""
        await conn.executemany(
            "DELETE FROM login_failures WHERE key = ?",
            [(self._keys(login, "")[0][1],) for login in set(logins)],
        )

    async def prune(self, conn: Connection, now: float) -> None:
        window = max(self.user_limit.window, self.client_limit.window)
        await conn.execute("DELETE FROM login_failures WHERE at <= ?", (now - window,))
