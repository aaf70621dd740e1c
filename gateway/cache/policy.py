"""``CachePolicy``: the configurable choices the pure cache rules take as a parameter.

The RFCs leave a few things to the cache: which targeted fields it obeys (RFC 9213 §2.1) and
how generous its heuristic freshness is (RFC 9111 §4.2.2).  They come from ``[cache]`` and
are carried by every ``StoredResponse``, so a 304 that freshens an entry is judged by the
same policy that stored it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.cache.targeted import DEFAULT_TARGETS
from gateway.config import CacheSettings

# RFC 9111 §4.2.2: "A typical setting of this fraction might be 10%".
HEURISTIC_FRACTION = 0.1
# An upper bound on heuristic freshness, as Squid (refresh_pattern max) and Traffic Server
# (heuristic_max_lifetime) have: a file untouched for ten years is not fresh for one.
HEURISTIC_MAX_SECONDS = 86400.0


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """``targeted_fields``: the target list, lowercase, most specific first (empty: none).
    ``heuristic_fraction``: the share of the Last-Modified age a response without explicit
    freshness stays fresh (0 turns heuristics off); ``heuristic_max_seconds`` caps it."""

    targeted_fields: tuple[bytes, ...] = DEFAULT_TARGETS
    heuristic_fraction: float = HEURISTIC_FRACTION
    heuristic_max_seconds: float = HEURISTIC_MAX_SECONDS

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> CachePolicy:
        return cls(
            targeted_fields=tuple(
                name.lower().encode("ascii") for name in settings.targeted_fields
            ),
            heuristic_fraction=settings.heuristic_fraction,
            heuristic_max_seconds=settings.heuristic_max_seconds,
        )


DEFAULT_POLICY = CachePolicy()
