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
no latency beyond the request that found it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.cache import codec
from gateway.cache.coalescing import Coalescer
from gateway.cache.decisions import Decision
from gateway.cache.fields import HeaderPairs
from gateway.cache.policy import CachePolicy
from gateway.cache.stores import bypasses, decide
from gateway.cache.storing import StoredResponse

log = logging.getLogger("gateway.cache")

PREFIX = "pygateway:cache:"
# A request never waits longer than this for Redis (connect or answer).
TIMEOUT = 0.5
# After a failure, Redis is left alone this long before the next request tries it again.
RETRY_AFTER = 1.0
# Kept this long past the end of an entry's freshness and stale allowances (revalidation).
KEEP_AFTER_USE = 86400
_ERRORS = (RedisError, OSError, TimeoutError)


class RedisStore:
    def __init__(self, url: str, max_bytes: int, max_entry_bytes: int, policy: CachePolicy) -> None:
        self.url = url
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.policy = policy
        self.client: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            retry_on_timeout=False,
            retry=None,
            health_check_interval=0,
        )
        self._memo = codec.DecodedEntries(min(max_bytes // 8, 8 * 1024 * 1024))
        self._down_until = 0.0  # monotonic; 0 while Redis answers
        self._outage = False

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
        if bypasses(method, request_headers) or not self._available():
            return decide(
                None if bypasses(method, request_headers) else [], method, request_headers, now
            )
        try:
            stored: dict[bytes, bytes] = await self.client.hgetall(PREFIX + primary_key)
        except _ERRORS as exc:
            self._failed(exc)
            return decide([], method, request_headers, now)
        self._answered()
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
        if not self._available():
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
        except _ERRORS as exc:
            self._failed(exc)
            return False
        self._answered()
        return True

    async def invalidate(self, primary_key: str) -> int:
        if not self._available():
            return 0
        name = PREFIX + primary_key
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hlen(name)
                pipe.delete(name)
                count, _ = await pipe.execute()
        except _ERRORS as exc:
            self._failed(exc)
            return 0
        self._answered()
        return int(count)

    async def primary_keys(self) -> list[str]:
        if not self._available():
            return []
        try:
            return [
                key.decode("utf-8", "surrogatepass")[len(PREFIX) :]
                async for key in self.client.scan_iter(match=PREFIX + "*", count=500)
            ]
        except _ERRORS as exc:
            self._failed(exc)
            return []

    async def usage(self) -> tuple[int, int]:
        """(entries, bytes): the hashes under our prefix and their values' bytes (a SCAN:
        for the admin API, not the request path)."""
        entries = size = 0
        for key in await self.primary_keys():
            try:
                lengths = await self.client.hvals(PREFIX + key)
            except _ERRORS as exc:
                self._failed(exc)
                break
            entries += len(lengths)
            size += sum(len(v) for v in lengths)
        return entries, size

    def coalescer(self, timeout: float) -> Coalescer:
        return Coalescer(timeout)

    async def aclose(self) -> None:
        await self.client.aclose()

    # --- the outage switch ----------------------------------------------------------------------

    def _available(self) -> bool:
        return self._down_until == 0.0 or time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER
        if not self._outage:
            self._outage = True
            log.warning(
                "redis cache %s unavailable (%s): passing requests through until it answers",
                self.url,
                exc or type(exc).__name__,
            )

    def _answered(self) -> None:
        self._down_until = 0.0
        if self._outage:
            self._outage = False
            log.warning("redis cache %s answers again", self.url)
