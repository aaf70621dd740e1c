"""``rate_limit``'s buckets in a Redis server that several gateway machines share
(``store = "redis://host:port/db"``; Traefik's ``rateLimit.redis``).

A take is one EVALSHA of ``TAKE`` (redis-py's ``register_script`` loads it again on
NOSCRIPT): the Lua script reads the bucket, refills it by the time elapsed, spends a token
and writes it back, atomically on the server however many gateways ask at once.  Its clock is
the server's ``TIME``, so the gateway machines' clocks need not agree.  The arithmetic is
``buckets.take_token``'s, step for step (a test runs both on the same sequence); an absent key
is a full bucket, as a new slot is in ``BucketTable``.  A key expires when its bucket would be
full again, so an idle client costs Redis no memory.

Keys: ``pygateway:rate_limit:NAME:DIGEST:`` + the client address, where DIGEST stands for
(average, burst): gateways share a bucket when they run the same limit under the same name,
and a changed limit starts from full buckets.

An outage (refused connection, timeout, any Redis error) never reaches a client: takes fall
back to this machine's table (``rate_limit.bucket_table``), so limits hold per machine until
Redis answers again.  ``gateway.redis_client`` has the back-off, the short timeouts and the
once-only log lines.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from gateway.middleware.buckets import BucketTable
from gateway.redis_client import ERRORS, Outage, connect

log = logging.getLogger("gateway.rate_limit")

PREFIX = "pygateway:rate_limit:"
# A request never waits longer than this for Redis (connect or answer): it is on every request.
TIMEOUT = 0.25

# KEYS[1] the bucket (a hash: tokens, stamp); ARGV rate (tokens/s), burst.  Returns
# {wait, tokens, now}: wait 0 = a token was spent, else the seconds until one is back, and
# tokens left (refilled) at the server's now.  Strings, written with %.17g, because Redis
# truncates a Lua number in a reply to an integer and %.17g reads back as the same double.
TAKE = """
if redis.replicate_commands then redis.replicate_commands() end -- writes after TIME (< 5.0)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(state[1]), tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens, stamp = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
             'stamp', string.format('%.17g', now))
  -- full again (the same as absent) after this long; capped to stay an integer in %.14g
  redis.call('PEXPIRE', KEYS[1], math.min(math.ceil((burst - tokens) / rate * 1000), 1e12))
else
  wait = (1 - tokens) / rate
end
return {string.format('%.17g', wait), string.format('%.17g', tokens),
        string.format('%.17g', now)}
"""


def key_prefix(name: str, rate: float, burst: float) -> bytes:
    digest = hashlib.sha256(f"{float(rate)!r}\0{float(burst)!r}".encode()).hexdigest()[:12]
    return f"{PREFIX}{name}:{digest}:".encode()


class RedisBuckets:
    """``BucketTable.take`` over Redis, as a coroutine, with ``fallback`` during outages."""

    def __init__(
        self, url: str, name: str, rate: float, burst: float, fallback: BucketTable
    ) -> None:
        self.client: Any = connect(url, TIMEOUT)
        self.script: Any = self.client.register_script(TAKE)
        self.prefix = key_prefix(name, rate, burst)
        self.args = (float(rate), float(burst))
        self.fallback = fallback
        self.outage = Outage(
            log,
            lambda error: (
                f"rate_limit {name}: redis unreachable ({error}); "
                "limiting per machine until it is back"
            ),
            f"rate_limit {name}: redis is back; limiting across machines again",
        )

    async def take(self, key: bytes) -> float:
        """Spend a token of ``key``'s bucket: 0.0 if it had one, else seconds to wait."""
        if self.outage.available():
            try:
                reply = await self.script(keys=[self.prefix + key], args=self.args)
            except ERRORS as exc:
                self.outage.failed(exc)
            else:
                self.outage.answered()
                return float(reply[0])
        return self.fallback.take(key)

    async def aclose(self) -> None:
        await self.client.aclose()
