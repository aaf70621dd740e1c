"""``rate_limit``: a token bucket per client address (Traefik's ``average``/``burst``).

Over the limit the request gets 429 with ``Retry-After`` (whole seconds, rounded up) and the
usual JSON error body, and the upstream never sees it.  The client address is the peer's,
or, for a peer in ``[gateway] trusted_proxies``, the address its X-Forwarded-For names (the
same rule as the forwarded headers); an untrusted peer's X-Forwarded-For is ignored, so it
cannot dodge its limit by inventing addresses.  The buckets are shared by every worker
process (``buckets``): ``workers = 2`` does not double the limit.
"""

from __future__ import annotations

import math

from gateway.asgi import Scope
from gateway.config import MiddlewareSettings, Settings
from gateway.errors import TooManyRequests
from gateway.headers import TrustedProxies
from gateway.middleware.buckets import BucketTable, shared_table_path
from gateway.request import Handler, Request

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

    def wrap(self, handler: Handler) -> Handler:
        buckets, trusted = self.buckets, self.trusted

        async def rate_limited(request: Request) -> None:
            address = client_address(request.scope, trusted)
            wait = buckets.take(address.encode())
            if wait:
                raise TooManyRequests(
                    f"rate limit exceeded for {address} "
                    f"({self.average:g} requests/s, burst {self.burst}; {self.name})",
                    retry_after(wait),
                )
            await handler(request)

        return rate_limited
