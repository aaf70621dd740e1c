"""Where stored responses live: ``[cache] store`` picks one implementation behind one interface.

- ``memory``  each gateway process its own ``ResponseCache`` (``memory.py``)
- ``shared``  one LMDB environment that every worker process of this machine maps
              (``lmdb_impl.py``): stored once, a hit everywhere, misses coalesced across workers
- ``redis://host:port/db``  a Redis server several gateway machines share (``redis_impl.py``)

The RFC 9111 rules do not depend on the choice: every store answers ``lookup`` with
``decisions.lookup_decision`` on the entry it selected (``select_variant``), and ``put`` only
enforces sizes.  Their methods are coroutines because a Redis store does network I/O; the
memory and shared stores never suspend.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from gateway.cache.coalescing import Coalescer
from gateway.cache.decisions import Decision, bypass_reason, lookup_decision
from gateway.cache.fields import HeaderPairs
from gateway.cache.keys import vary_matches
from gateway.cache.policy import CachePolicy
from gateway.cache.storing import StoredResponse
from gateway.config import CacheSettings


class CacheStore(Protocol):
    """What ``CacheLayer`` (and the admin API) need from a store."""

    policy: CachePolicy
    max_bytes: int
    max_entry_bytes: int

    def __len__(self) -> int:
        """Entries held, when known without I/O (0 for Redis: see ``usage``)."""
        ...

    @property
    def current_bytes(self) -> int: ...

    async def lookup(
        self, primary_key: str, method: str, request_headers: HeaderPairs, now: float
    ) -> Decision: ...

    async def put(self, primary_key: str, entry: StoredResponse) -> bool: ...

    async def invalidate(self, primary_key: str) -> int: ...

    async def primary_keys(self) -> list[str]: ...

    async def usage(self) -> tuple[int, int]:
        """(entries, bytes) held."""
        ...

    def coalescer(self, timeout: float) -> Coalescer: ...

    def generation(self) -> int | None:
        """A number that changes whenever anything stored may have changed (any write,
        eviction or invalidation, by any process sharing the store); None when that cannot
        be known without I/O (Redis).  ``cache.hot`` answers only while it stays the same."""
        ...

    async def aclose(self) -> None: ...


def select_variant(
    entries: Iterable[StoredResponse], request_headers: HeaderPairs
) -> StoredResponse | None:
    """The stored response selected for this request among a URI's variants (RFC 9111 §4.1):
    the most recent by Date among those whose Vary key matches, as ``ResponseCache.get``."""
    best: StoredResponse | None = None
    for entry in entries:
        if not vary_matches(entry, request_headers):
            continue
        if best is None or (entry.date, entry.response_time) > (best.date, best.response_time):
            best = entry
    return best


def decide(
    entries: list[StoredResponse] | None,
    method: str,
    request_headers: HeaderPairs,
    now: float,
) -> Decision:
    """``ResponseCache.lookup``'s answer for the variants ``entries`` stored under a key
    (None: the request bypasses the cache, nothing was read)."""
    if entries is None:
        return lookup_decision(None, method, request_headers, now)
    entry = select_variant(entries, request_headers)
    miss = "vary-miss" if entry is None and entries else "uri-miss"
    return lookup_decision(entry, method, request_headers, now, miss=miss)


def bypasses(method: str, request_headers: HeaderPairs) -> bool:
    """Whether the request is answered without reading the store (no-store, no-cache, ...)."""
    return bypass_reason(method, request_headers) is not None


def open_store(settings: CacheSettings, shared_dir: Path | None = None) -> CacheStore:
    """The store ``settings.store`` names; ``shared_dir`` is where ``shared`` keeps its files
    (the config's ``var/gateway-cache`` by default)."""
    from gateway.cache.policy import CachePolicy
    from gateway.cache.store import ResponseCache

    policy = CachePolicy.from_settings(settings)
    name = settings.store
    if name.startswith("redis://"):
        from gateway.cache.stores.redis_impl import RedisStore

        return RedisStore(name, settings.max_bytes, settings.max_entry_bytes, policy)
    if name == "shared":
        from gateway.cache.stores.lmdb_impl import SharedStore

        directory = shared_dir or settings.shared_dir or Path("var/gateway-cache").resolve()
        return SharedStore(directory, settings.max_bytes, settings.max_entry_bytes, policy)
    from gateway.cache.stores.memory import MemoryStore

    return MemoryStore(ResponseCache.from_settings(settings))
