"""``Upstream``: a named pool of servers (``[upstreams.NAME]``) with everything the proxy needs
to pick one: health state, the round-robin balancer and a connection pool per server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection
from typing import Any

from gateway.balancer import RoundRobin
from gateway.config import UpstreamServer, UpstreamSettings
from gateway.errors import NoUpstreamAvailable
from gateway.health import FailureKind, HealthChecker, ServerHealth, new_server_health
from gateway.upstream.parsers import ResponseParser
from gateway.upstream.pool import ConnectionPool


class Upstream:
    def __init__(
        self, settings: UpstreamSettings, parser: type[ResponseParser] | None = None
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self.health: dict[UpstreamServer, ServerHealth] = {
            server: new_server_health(settings, server) for server in settings.servers
        }
        self.pools = {
            server: ConnectionPool(server, settings, parser) for server in settings.servers
        }
        health = self.health
        self.balancer = RoundRobin(settings.servers, lambda s: health[s].is_up)
        self.checker = HealthChecker(settings, self.health)
        self.retries = settings.retries
        self.hold_until = 0.0  # loop time until which requests wait for ``ready``

    @property
    def ready(self) -> asyncio.Event:
        """Set once a server passed an active health check."""
        return self.checker.ready

    def start(self, ready_timeout: float) -> None:
        """Start the health checks; until a server passes one (at most ``ready_timeout``),
        ``wait_ready`` holds requests instead of letting them fail against a server that is
        still starting."""
        self.hold_until = asyncio.get_running_loop().time() + ready_timeout
        self.checker.start(startup=ready_timeout)

    async def wait_ready(self) -> None:
        remaining = self.hold_until - asyncio.get_running_loop().time()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.ready.wait()

    def choose(self, exclude: Collection[UpstreamServer] = ()) -> UpstreamServer:
        """The next UP server this request has not tried; when none is left, a DOWN one it has
        not tried (Nginx resets the failure state of a pool whose servers are all down, "for
        quick recovery": a server that is back answers at once instead of after the next
        active check).  NoUpstreamAvailable once every server has been tried."""
        server = self.balancer.choose(exclude) or self.balancer.choose(exclude, any_state=True)
        if server is None:
            if any(h.is_up for h in self.health.values()):
                raise NoUpstreamAvailable(
                    f"upstream {self.name!r}: every available server failed this request"
                )
            raise self.all_down()
        return server

    def is_up(self, server: UpstreamServer) -> bool:
        return self.health[server].is_up

    def all_down(self) -> NoUpstreamAvailable:
        return NoUpstreamAvailable(
            f"upstream {self.name!r}: all {len(self.health)} servers are DOWN",
            retry_after=max(1, round(self.settings.health_interval)),
        )

    def report_success(self, server: UpstreamServer) -> None:
        health = self.health[server]
        if not health.is_up:
            health.record_success(time.monotonic())

    def report_failure(self, server: UpstreamServer, kind: FailureKind, detail: str) -> None:
        self.health[server].record_failure(kind, detail, time.monotonic())

    def snapshot(self) -> dict[str, Any]:
        """The pool's current state, for status pages and dashboards."""
        return {
            "upstream": self.name,
            "servers": [
                {**health.snapshot(), "connections_opened": self.pools[server].opened}
                for server, health in self.health.items()
            ],
        }

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
