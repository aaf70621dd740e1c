"""``rate_limit``: a token bucket per client address (Traefik's ``average``/``burst``).

Over the limit the request gets 429 with ``Retry-After`` (whole seconds, rounded up) and the
usual JSON error body, and the upstream never sees it.  The client address is the peer's,
or, for a peer in ``[gateway] trusted_proxies``, the address its X-Forwarded-For names (the
same rule as the forwarded headers); an untrusted peer's X-Forwarded-For is ignored, so it
cannot dodge its limit by inventing addresses.  The buckets are shared by every worker
process (``buckets``): ``workers = 2`` does not double the limit.  With ``store =
"redis://..."`` they live in Redis and are shared by every gateway machine using it
(``redis_buckets``); only then does a take suspend, so the usual path stays synchronous.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NoReturn

from gateway.asgi import Scope
from gateway.config import MiddlewareSettings, Settings
from gateway.errors import TooManyRequests
from gateway.headers import TrustedProxies
from gateway.middleware.buckets import BucketTable, shared_table_path
from gateway.request import Handler, Request

if TYPE_CHECKING:
    from gateway.middleware.redis_buckets import RedisBuckets

DEFAULT_AVERAGE = 100.0
DEFAULT_BURST = 50


def client_address(scope: Scope, trusted: TrustedProxies) -> str:
    """The address a limit applies to (see the module docstring)."""
    client = scope.get("client")
    peer: str = client[0] if client else "unknown"
    if not trusted or not trusted.contains(peer):
        return peer
    chain: list[str] = []
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            chain.extend(a.strip() for a in value.decode("latin-1").split(",") if a.strip())
    return trusted.real_client(peer, chain)


def bucket_table(settings: Settings, name: str, rate: float, burst: float) -> BucketTable:
    """A table in process memory for one worker, a shared file mapping for several."""
    g = settings.gateway
    if g.workers == 1:
        return BucketTable(rate, burst)
    path = shared_table_path(settings.path, g.host, g.https_port, name, rate, burst)
    return BucketTable(rate, burst, path)


def retry_after(wait: float) -> int:
    return max(1, math.ceil(wait))


class RateLimit:
    applies_to_websocket = True

    def __init__(self, config: MiddlewareSettings, settings: Settings) -> None:
        self.name = config.name
        self.average: float = config.options.get("average", DEFAULT_AVERAGE)
        self.burst: int = config.options.get("burst", DEFAULT_BURST)
        self.trusted = TrustedProxies(settings.gateway.trusted_proxies)
        self.buckets = bucket_table(settings, config.name, self.average, self.burst)
        self.redis: RedisBuckets | None = None
        store: str | None = config.options.get("store")
        if store is not None:
            from gateway.middleware.redis_buckets import RedisBuckets

            # This machine's table stays the fallback while Redis does not answer.
            self.redis = RedisBuckets(store, self.name, self.average, self.burst, self.buckets)

    def wrap(self, handler: Handler) -> Handler:
        if self.redis is not None:
            return self._wrap_redis(handler, self.redis)
        buckets, trusted, refuse = self.buckets, self.trusted, self.refuse

        async def rate_limited(request: Request) -> None:
            address = client_address(request.scope, trusted)
            wait = buckets.take(address.encode())
            if wait:
                refuse(address, wait)
            await handler(request)

        return rate_limited

    def _wrap_redis(self, handler: Handler, redis: RedisBuckets) -> Handler:
        trusted, refuse = self.trusted, self.refuse

        async def rate_limited(request: Request) -> None:
            address = client_address(request.scope, trusted)
            wait = await redis.take(address.encode())
            if wait:
                refuse(address, wait)
            await handler(request)

        return rate_limited

    def refuse(self, address: str, wait: float) -> NoReturn:
        raise TooManyRequests(
            f"rate limit exceeded for {address} "
            f"({self.average:g} requests/s, burst {self.burst}; {self.name})",
            retry_after(wait),
        )

    async def aclose(self) -> None:
        """The Redis client's connections (``close_middlewares``)."""
        if self.redis is not None:
            await self.redis.aclose()
