"""``ResponseCache``: the in-memory store of responses, bounded in bytes, evicting LRU.

Entries are kept per (primary key, Vary key): one URI can hold several variants, e.g. one per
Accept-Encoding (RFC 9111 §4.1).  The store holds no policy beyond selection and size; what is
storable, fresh or servable is decided by ``storing``, ``freshness`` and ``decisions``.  No
I/O, no clock, no locks: it is used from one event loop.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.cache.decisions import Decision, bypass_reason, lookup_decision
from gateway.cache.fields import HeaderPairs
from gateway.cache.keys import VaryKey, vary_matches
from gateway.cache.policy import DEFAULT_POLICY, CachePolicy
from gateway.cache.storing import StoredResponse
from gateway.config import CacheSettings


class ResponseCache:
    """Stored responses by primary key and Vary key, at most ``max_bytes`` in total.

    ``max_entry_bytes`` caps one body; larger responses are refused (they stream through).
    Every entry's ``size`` (body + header bytes + a fixed overhead) counts towards
    ``max_bytes``; the least recently used entries are evicted to make room.
    """

    def __init__(
        self, max_bytes: int, max_entry_bytes: int, policy: CachePolicy = DEFAULT_POLICY
    ) -> None:
        if max_bytes < 0 or max_entry_bytes < 0:
            raise ValueError(
                f"ResponseCache sizes must be >= 0, got max_bytes={max_bytes}, "
                f"max_entry_bytes={max_entry_bytes}"
            )
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        # The configurable side of the rules (targeted fields, heuristics) for what is stored.
        self.policy = policy
        # Insertion order is recency order: the first item is the next to evict.
        self._entries: OrderedDict[tuple[str, VaryKey], StoredResponse] = OrderedDict()
        self._variants: dict[str, set[VaryKey]] = {}
        self._bytes = 0
        # Changes with every write, eviction and invalidation (``cache.hot`` checks it).
        self.generation = 0

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> ResponseCache:
        return cls(
            settings.max_bytes, settings.max_entry_bytes, CachePolicy.from_settings(settings)
        )

    @property
    def current_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, primary_key: object) -> bool:
        """Whether any variant is stored for this primary key."""
        return primary_key in self._variants

    def get(self, primary_key: str, request_headers: HeaderPairs) -> StoredResponse | None:
        """The stored response selected for this request (RFC 9111 §4.1), or None.

        Among several matching variants (the origin changed its Vary), the most recent by Date
        wins, as §4.1 recommends.  A hit makes the entry most recently used.
        """
        variants = self._variants.get(primary_key)
        if not variants:
            return None
        best: StoredResponse | None = None
        best_vary: VaryKey = ()
        for vary in variants:
            entry = self._entries[(primary_key, vary)]
            if not vary_matches(entry, request_headers):
                continue
            if best is None or (entry.date, entry.response_time) > (best.date, best.response_time):
                best, best_vary = entry, vary
        if best is not None:
            self._entries.move_to_end((primary_key, best_vary))
        return best

    def lookup(
        self, primary_key: str, method: str, request_headers: HeaderPairs, now: float
    ) -> Decision:
        """``decisions.lookup_decision`` for the entry this request selects; the miss reason is
        "vary-miss" when the URI has variants but none matches (RFC 9211 §2.2)."""
        if bypass_reason(method, request_headers) is not None:
            return lookup_decision(None, method, request_headers, now)
        entry = self.get(primary_key, request_headers)
        miss = "vary-miss" if entry is None and primary_key in self._variants else "uri-miss"
        return lookup_decision(entry, method, request_headers, now, miss=miss)

    def put(self, primary_key: str, entry: StoredResponse) -> bool:
        """Store ``entry`` (replacing the same variant), evicting as needed; False when it is
        too large (body over ``max_entry_bytes`` or size over ``max_bytes``).

        The caller checks ``storing.is_storable`` first; the store only enforces size.
        """
        if len(entry.body) > self.max_entry_bytes or entry.size > self.max_bytes:
            return False
        slot = (primary_key, entry.vary)
        if slot in self._entries:
            self._remove(slot)
        while self._bytes + entry.size > self.max_bytes:
            self._remove(next(iter(self._entries)))
        self._entries[slot] = entry
        self._variants.setdefault(primary_key, set()).add(entry.vary)
        self._bytes += entry.size
        self.generation += 1
        return True

    def invalidate(self, primary_key: str) -> int:
        """Drop every variant stored for ``primary_key`` (RFC 9111 §4.4); how many there were."""
        variants = self._variants.get(primary_key)
        if not variants:
            return 0
        count = len(variants)
        for vary in list(variants):
            self._remove((primary_key, vary))
        return count

    def primary_keys(self) -> list[str]:
        """Every primary key with a stored variant (the admin API purges by path prefix)."""
        return list(self._variants)

    def clear(self) -> None:
        self._entries.clear()
        self._variants.clear()
        self._bytes = 0
        self.generation += 1

    def _remove(self, slot: tuple[str, VaryKey]) -> None:
        entry = self._entries.pop(slot)
        self._bytes -= entry.size
        self.generation += 1
        primary_key, vary = slot
        variants = self._variants[primary_key]
        variants.discard(vary)
        if not variants:
            del self._variants[primary_key]
