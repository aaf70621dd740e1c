"""Choosing a server of a pool: round robin over the servers that are UP (Nginx's default)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Generic, TypeVar

S = TypeVar("S")


class RoundRobin(Generic[S]):
    """Plain round robin: over N requests each of k available servers gets N/k ± 1.

    ``choose`` skips servers that are not available or that this request already tried, so a
    retry never goes to the same server twice.
    """

    def __init__(self, servers: Sequence[S], is_available: Callable[[S], bool]) -> None:
        self.servers = tuple(servers)
        self.is_available = is_available
        self._next = 0

    def choose(self, exclude: Collection[S] = (), *, any_state: bool = False) -> S | None:
        """The next server not in ``exclude`` that is available (or any, with ``any_state``)."""
        servers = self.servers
        count = len(servers)
        start = self._next
        for offset in range(count):
            server = servers[(start + offset) % count]
            if server in exclude or not (any_state or self.is_available(server)):
                continue
            self._next = (start + offset + 1) % count
            return server
        return None
