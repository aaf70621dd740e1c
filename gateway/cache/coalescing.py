"""Request coalescing (Nginx ``proxy_cache_lock``): one upstream fetch per key at a time.

The first request to miss on a key becomes the *leader* and goes upstream; concurrent misses
on the same key wait until the leader is done (it stored the response, or found it
uncacheable, failed, or was cancelled), then look the cache up again and, on a second miss,
go upstream themselves.  A waiter gives up waiting after ``timeout`` seconds, so a stuck
leader never holds anyone for longer.  asyncio only; no sockets, no cache knowledge.

``HitForPass`` remembers the keys whose last response could not be stored, so that misses on
them skip the wait (Varnish's "hit-for-pass"/"hit-for-miss").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class Flight:
    """One leader's upstream fetch for a key; waiters wait for ``release``."""

    __slots__ = ("key", "_flights", "_done")

    def __init__(self, key: str, flights: dict[str, Flight]) -> None:
        self.key = key
        self._flights = flights  # the coalescer's table, which this flight leaves on release
        self._done = asyncio.Event()

    @property
    def released(self) -> bool:
        return self._done.is_set()

    def release(self) -> None:
        """Wake the waiters and let the next miss lead; idempotent, never releases another
        leader's later flight for the same key."""
        if self._done.is_set():
            return
        self._done.set()
        if self._flights.get(self.key) is self:
            del self._flights[self.key]

    async def wait(self, timeout: float | None) -> bool:
        """True once released, False when ``timeout`` seconds passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._done.wait()
        except TimeoutError:
            return False
        return True


class Coalescer:
    """Collapses concurrent misses on one key into one upstream request.

    ``async with coalescer.lead_or_wait(key) as leader:`` gives ``leader=True`` to exactly one
    of the concurrent callers (its flight is released when the block exits, however it
    exits) and ``False`` to the others once that flight is released or their wait timed out.
    ``try_lead`` / ``Flight.release`` do the same by hand, e.g. for a background refresh
    that should not start twice.
    """

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._flights: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    def try_lead(self, key: str) -> Flight | None:
        """A new flight when nobody leads ``key``, else None.  Synchronous, hence atomic in
        the event loop: of N callers in one loop, exactly one gets the flight."""
        if key in self._flights:
            return None
        flight = self._flights[key] = Flight(key, self._flights)
        return flight

    async def wait(self, key: str, timeout: float | None = None) -> bool:
        """Wait for the current flight on ``key`` (if any); False when the wait timed out."""
        flight = self._flights.get(key)
        if flight is None:
            return True
        return await flight.wait(self.timeout if timeout is None else timeout)

    @asynccontextmanager
    async def lead_or_wait(self, key: str, timeout: float | None = None) -> AsyncIterator[bool]:
        """Lead the fetch for ``key`` (yields True) or wait for the leader (yields False)."""
        flight = self.try_lead(key)
        if flight is None:
            await self.wait(key, timeout)
            yield False
            return
        try:
            yield True
        finally:
            # Also on failure or cancellation: the waiters must never wait for a dead leader.
            flight.release()


class HitForPass:
    """Keys whose response was not storable a moment ago, each for ``ttl`` seconds.

    A miss on such a key goes upstream at once instead of queueing behind a leader whose
    response would most likely not be stored either.  Bounded: the table is simply cleared
    when it holds ``max_keys`` (it is only an optimisation).
    """

    def __init__(
        self, clock: Callable[[], float], ttl: float = 60.0, max_keys: int = 10_000
    ) -> None:
        self.clock = clock
        self.ttl = ttl
        self.max_keys = max_keys
        self._until: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        until = self._until.get(key)
        if until is None:
            return False
        if until > self.clock():
            return True
        del self._until[key]
        return False

    def add(self, key: str) -> None:
        if len(self._until) >= self.max_keys:
            self._until.clear()
        self._until[key] = self.clock() + self.ttl

    def discard(self, key: str) -> None:
        self._until.pop(key, None)
