"""A Redis client for the request path, shared by the cache's Redis store and ``rate_limit``'s.

Both ask Redis while a client waits, and both must keep answering when Redis does not: so the
client has short socket timeouts and no retries (``connect``), and ``Outage`` is the switch
that, after a failure, leaves Redis alone for ``RETRY_AFTER`` seconds (the caller uses its
fallback meanwhile, so an outage costs latency only to the request that finds it) and logs the
outage and the recovery once each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

# What a failed Redis call raises: refused or reset connections, timeouts, server errors.
ERRORS = (RedisError, OSError, TimeoutError)
# After a failure, Redis is left alone this long before the next request tries it again.
RETRY_AFTER = 1.0


def connect(url: str, timeout: float) -> Any:
    """A client (connecting lazily) that never waits longer than ``timeout`` to connect or
    for an answer, and never retries by itself."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        retry=None,
        health_check_interval=0,
    )


class Outage:
    """Whether Redis may be asked now; ``failed``/``answered`` after each call.

    ``down(error)`` and ``back`` are the two log lines (warnings on ``logger``).  ``clock``
    is injectable for tests."""

    def __init__(
        self,
        logger: logging.Logger,
        down: Callable[[str], str],
        back: str,
        *,
        retry_after: float = RETRY_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.down = down
        self.back = back
        self.retry_after = retry_after
        self.clock = clock
        self.down_until = 0.0  # on ``clock``; 0 while Redis answers
        self.ongoing = False

    def available(self) -> bool:
        return self.down_until == 0.0 or self.clock() >= self.down_until

    def failed(self, exc: BaseException) -> None:
        self.down_until = self.clock() + self.retry_after
        if not self.ongoing:
            self.ongoing = True
            self.logger.warning("%s", self.down(str(exc) or type(exc).__name__))

    def answered(self) -> None:
        self.down_until = 0.0
        if self.ongoing:
            self.ongoing = False
            self.logger.warning("%s", self.back)
