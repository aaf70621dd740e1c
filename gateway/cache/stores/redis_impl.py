"""``store = "redis://host:port/db"``: stored responses in a Redis server that several gateway
machines share, so a response stored by one is a hit on all and an unsafe request on one
invalidates it for all.

One Redis hash per primary key (``pygateway:cache:`` + key), one field per variant (the
encoded Vary key), each value ``codec.encode(entry)``: a lookup is one HGETALL, an
invalidation one DEL.  Memory is bounded by the server (``maxmemory`` with an
``allkeys-lru`` policy, as a Redis cache is usually run); each hash also expires a day after
its entries stop being usable, so nothing outlives its use without a maxmemory either.
Concurrent misses are coalesced within each process (``Coalescer``), not across machines.

A Redis outage degrades to passing requests through: a lookup that fails is a miss, a put or
an invalidation that fails does nothing, the first failure is logged once (and the recovery),
and for ``RETRY_AFTER`` seconds after a failure Redis is not asked at all, so an outage adds
no latency beyond the request that found it (``gateway.redis_client``, shared with
``rate_limit``).
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.cache import codec
from gateway.cache.coalescing import Coalescer
from gateway.cache.decisions import Decision
from gateway.cache.fields import HeaderPairs
from gateway.cache.policy import CachePolicy
from gateway.cache.stores import bypasses, decide
from gateway.cache.storing import StoredResponse
from gateway.redis_client import ERRORS, Outage, connect

log = logging.getLogger("gateway.cache")

PREFIX = "pygateway:cache:"
# A request never waits longer than this for Redis (connect or answer).
TIMEOUT = 0.5
# Kept this long past the end of an entry's freshness and stale allowances (revalidation).
KEEP_AFTER_USE = 86400


class RedisStore:
    def __init__(self, url: str, max_bytes: int, max_entry_bytes: int, policy: CachePolicy) -> None:
        self.url = url
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.policy = policy
        self.client: Any = connect(url, TIMEOUT)
        self._memo = codec.DecodedEntries(min(max_bytes // 8, 8 * 1024 * 1024))
        self.outage = Outage(
            log,
            lambda error: (
                f"redis cache {url} unavailable ({error}): "
                "passing requests through until it answers"
            ),
            f"redis cache {url} answers again",
        )

    def __len__(self) -> int:
        """Not tracked per process: the server holds the count (``usage``, or
        ``redis-cli --scan --pattern 'pygateway:cache:*'``)."""
        return 0

    @property
    def current_bytes(self) -> int:
        return 0

    async def lookup(
        self, primary_key: str, method: str, request_headers: HeaderPairs, now: float
    ) -> Decision:
        if bypasses(method, request_headers) or not self.outage.available():
            return decide(
                None if bypasses(method, request_headers) else [], method, request_headers, now
            )
        try:
            stored: dict[bytes, bytes] = await self.client.hgetall(PREFIX + primary_key)
        except ERRORS as exc:
            self.outage.failed(exc)
            return decide([], method, request_headers, now)
        self.outage.answered()
        entries = []
        for field, value in stored.items():
            slot = field + b"\x00" + primary_key.encode("utf-8", "surrogatepass")
            stamp = codec.stamp_of(value)
            entry = self._memo.get(slot, stamp)
            if entry is None:
                try:
                    entry = codec.decode(value, self.policy)
                except codec.CodecError as exc:
                    log.debug(
                        "redis cache: skipping an unreadable entry for %s: %s", primary_key, exc
                    )
                    continue
                self._memo.add(slot, stamp, entry)
            entries.append(entry)
        return decide(entries, method, request_headers, now)

    async def put(self, primary_key: str, entry: StoredResponse) -> bool:
        if len(entry.body) > self.max_entry_bytes or entry.size > self.max_bytes:
            return False
        if not self.outage.available():
            return False
        cc = entry.cache_control
        usable = entry.freshness_lifetime + max(
            cc.stale_while_revalidate or 0, cc.stale_if_error or 0
        )
        name = PREFIX + primary_key
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(name, codec.encode_vary(entry.vary), codec.encode(entry))
                pipe.expire(name, int(usable) + KEEP_AFTER_USE)
                await pipe.execute()
        except ERRORS as exc:
            self.outage.failed(exc)
            return False
        self.outage.answered()
        return True

    async def invalidate(self, primary_key: str) -> int:
        if not self.outage.available():
            return 0
        name = PREFIX + primary_key
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hlen(name)
                pipe.delete(name)
                count, _ = await pipe.execute()
        except ERRORS as exc:
            self.outage.failed(exc)
            return 0
        self.outage.answered()
        return int(count)

    async def primary_keys(self) -> list[str]:
        if not self.outage.available():
            return []
        try:
            return [
                key.decode("utf-8", "surrogatepass")[len(PREFIX) :]
                async for key in self.client.scan_iter(match=PREFIX + "*", count=500)
            ]
        except ERRORS as exc:
            self.outage.failed(exc)
            return []

    async def usage(self) -> tuple[int, int]:
        """(entries, bytes): the hashes under our prefix and their values' bytes (a SCAN:
        for the admin API, not the request path)."""
        entries = size = 0
        for key in await self.primary_keys():
            try:
                lengths = await self.client.hvals(PREFIX + key)
            except ERRORS as exc:
                self.outage.failed(exc)
                break
            entries += len(lengths)
            size += sum(len(v) for v in lengths)
        return entries, size

    def coalescer(self, timeout: float) -> Coalescer:
        return Coalescer(timeout)

    def generation(self) -> None:
        """Other machines' writes are not visible without I/O: no hot hits (``cache.hot``)."""
        return None

    async def aclose(self) -> None:
        await self.client.aclose()
