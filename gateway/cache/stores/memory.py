"""``store = "memory"``: each gateway process its own ``ResponseCache`` (the default with one
worker).  A thin async face over the synchronous store; nothing here ever suspends."""

from __future__ import annotations

from gateway.cache.coalescing import Coalescer
from gateway.cache.decisions import Decision
from gateway.cache.fields import HeaderPairs
from gateway.cache.store import ResponseCache
from gateway.cache.storing import StoredResponse


class MemoryStore:
    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache
        self.policy = cache.policy
        self.max_bytes = cache.max_bytes
        self.max_entry_bytes = cache.max_entry_bytes

    def __len__(self) -> int:
        return len(self.cache)

    @property
    def current_bytes(self) -> int:
        return self.cache.current_bytes

    def __contains__(self, primary_key: object) -> bool:
        return primary_key in self.cache

    async def lookup(
        self, primary_key: str, method: str, request_headers: HeaderPairs, now: float
    ) -> Decision:
        return self.cache.lookup(primary_key, method, request_headers, now)

    async def put(self, primary_key: str, entry: StoredResponse) -> bool:
        return self.cache.put(primary_key, entry)

    async def invalidate(self, primary_key: str) -> int:
        return self.cache.invalidate(primary_key)

    async def primary_keys(self) -> list[str]:
        return self.cache.primary_keys()

    async def usage(self) -> tuple[int, int]:
        return len(self.cache), self.cache.current_bytes

    def coalescer(self, timeout: float) -> Coalescer:
        return Coalescer(timeout)

    def generation(self) -> int:
        return self.cache.generation

    async def aclose(self) -> None:
        self.cache.clear()
