"""Upstream server health: the UP/DOWN state machine, passive checks, and active checks.

``ServerHealth`` is pure bookkeeping (no I/O, time passed in): active check results move a
server DOWN after ``unhealthy_threshold`` consecutive failures and UP after
``healthy_threshold`` successes; passive observations from real traffic (a refused connect or
a reset marks it DOWN at once; ``max_fails`` timeouts or, if enabled, 5xx within
``fail_window`` do the same).  Servers start UP, so a fresh gateway never answers 503 before
its first check (Caddy's classic complaint).  ``HealthChecker`` is the thin asyncio loop that
sends ``GET health_path`` to every server with httpx.

Three rules keep one bad exchange from taking a service down (as in Nginx):

- the only server of a pool is never marked DOWN by passive failures (``passive_checks`` is
  off for it: Nginx ignores max_fails for a lone server); taking it out of rotation would
  turn one reset into 503s for every client until the next active check;
- a DOWN server that answers a request well is UP again at once (``record_success``): when
  every server is DOWN the pool still tries them (see ``Upstream.choose``), and one that
  answers is proof enough;
- failures the client caused (a stalled body, a disconnect) are never reported at all: the
  proxy decides that (``gateway.handlers.proxy``), this module only counts what it is told.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway.config import UpstreamServer, UpstreamSettings
from gateway.upstream.pool import upstream_ssl_context

log = logging.getLogger("gateway.health")


class ServerStatus(enum.Enum):
    UP = "UP"
    DOWN = "DOWN"


# An enum member read through its class costs three times a plain attribute (EnumType's
# __getattr__ hook), and ``is_up`` is asked several times per proxied request.
_UP = ServerStatus.UP


class FailureKind(enum.Enum):
    CONNECT = "connect"  # refused / unreachable: the server is not there
    RESET = "reset"  # connection reset mid-exchange
    TIMEOUT = "timeout"
    STATUS_5XX = "5xx"


@dataclass
class ServerHealth:
    upstream: str
    server: UpstreamServer
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1
    max_fails: int = 3
    fail_window: float = 10.0
    passive_5xx: bool = False
    # False for a pool's only server: traffic failures never take it out of rotation.
    passive_checks: bool = True
    status: ServerStatus = ServerStatus.UP
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_error: str | None = None
    last_checked: float | None = None
    last_change: float | None = None
    recent_failures: deque[float] = field(default_factory=deque)

    @property
    def is_up(self) -> bool:
        return self.status is _UP

    def record_check(self, ok: bool, detail: str, now: float) -> ServerStatus | None:
        """Apply one active check result; return the new status on a transition."""
        self.last_checked = now
        if ok:
            self.consecutive_failures = 0
            self.consecutive_successes += 1
            if not self.is_up and self.consecutive_successes >= self.healthy_threshold:
                return self._set(ServerStatus.UP, detail, now)
        else:
            self.consecutive_successes = 0
            self.consecutive_failures += 1
            self.last_error = detail
            if self.is_up and self.consecutive_failures >= self.unhealthy_threshold:
                return self._set(ServerStatus.DOWN, detail, now)
        return None

    def record_failure(self, kind: FailureKind, detail: str, now: float) -> ServerStatus | None:
        """Apply one failure seen on real traffic (passive check)."""
        if not self.is_up:
            return None
        self.last_error = detail
        if not self.passive_checks:
            return None
        if kind in (FailureKind.CONNECT, FailureKind.RESET):
            return self._set(ServerStatus.DOWN, detail, now)
        if kind is FailureKind.STATUS_5XX and not self.passive_5xx:
            return None
        if self.max_fails == 0:
            return None
        window = self.recent_failures
        window.append(now)
        while window and now - window[0] > self.fail_window:
            window.popleft()
        if len(window) >= self.max_fails:
            return self._set(ServerStatus.DOWN, f"{len(window)} failures: {detail}", now)
        return None

    def record_success(self, now: float) -> ServerStatus | None:
        """A request to this server was answered well: a DOWN server is UP again at once
        (it was tried only because every server of its pool was DOWN)."""
        if self.is_up:
            return None
        return self._set(ServerStatus.UP, "answered a request", now)

    def _set(self, status: ServerStatus, detail: str, now: float) -> ServerStatus:
        self.status = status
        self.last_change = now
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.recent_failures.clear()
        if status is ServerStatus.UP:
            log.warning("upstream %s server %s UP", self.upstream, self.server)
        else:
            log.warning("upstream %s server %s DOWN: %s", self.upstream, self.server, detail)
        return status

    def snapshot(self) -> dict[str, Any]:
        return {
            "server": self.server.address,
            "status": self.status.value,
            "consecutive_failures": self.consecutive_failures,
            "consecutive_successes": self.consecutive_successes,
            "last_error": self.last_error,
            "last_checked": self.last_checked,
            "last_change": self.last_change,
        }


def new_server_health(settings: UpstreamSettings, server: UpstreamServer) -> ServerHealth:
    return ServerHealth(
        upstream=settings.name,
        server=server,
        unhealthy_threshold=settings.unhealthy_threshold,
        healthy_threshold=settings.healthy_threshold,
        max_fails=settings.max_fails,
        fail_window=settings.fail_window,
        passive_5xx=settings.passive_5xx,
        passive_checks=len(settings.servers) > 1,
    )


def status_is_healthy(status: int, expected: tuple[int, ...] | None) -> bool:
    if expected is not None:
        return status in expected
    return 200 <= status < 400


STARTUP_POLL = 0.1  # seconds between check rounds until a server first passes


class HealthChecker:
    """Active checks for one upstream pool: every ``health_interval``, ``GET health_path``
    on each server concurrently, with ``health_timeout``."""

    def __init__(self, settings: UpstreamSettings, health: dict[UpstreamServer, ServerHealth]):
        self.settings = settings
        self.health = health
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self.rounds = 0
        self._round_done = asyncio.Event()
        # Set once a server is UP after passing a check: start-up waits for it (see _run).
        self.ready = asyncio.Event()
        self.startup_until = 0.0

    def start(self, startup: float = 0.0) -> None:
        """Start checking; for ``startup`` seconds, or until a server passes, check every
        STARTUP_POLL seconds without counting failures (the upstream may be starting too)."""
        self.startup_until = asyncio.get_running_loop().time() + startup
        timeout = httpx.Timeout(self.settings.health_timeout)
        # No keep-alive: a check must prove the server still accepts new connections.
        limits = httpx.Limits(max_keepalive_connections=0)
        verify: ssl.SSLContext | bool = upstream_ssl_context(self.settings) or True
        self._client = httpx.AsyncClient(
            timeout=timeout, limits=limits, trust_env=False, verify=verify
        )
        self._task = asyncio.create_task(self._run(), name=f"health:{self.settings.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def wait_round(self) -> None:
        """Wait until the next full round of checks has completed (used by tests)."""
        self._round_done.clear()
        await self._round_done.wait()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.health_interval
        next_round = loop.time()
        while True:
            starting = not self.ready.is_set() and loop.time() < self.startup_until
            await self.check_all(count_failures=not starting)
            self.rounds += 1
            self._round_done.set()
            # Until a server has passed a check, check often: at start-up the upstream is
            # typically coming up at the same moment, and requests are held until it is.
            step = min(STARTUP_POLL, interval) if starting else interval
            next_round += step
            # Skip missed rounds rather than firing a burst after a stall.
            now = loop.time()
            if next_round < now:
                next_round = now + step
            await asyncio.sleep(next_round - now)

    async def check_all(self, count_failures: bool = True) -> None:
        servers = self.settings.servers
        await asyncio.gather(*(self.check(server, count_failures) for server in servers))

    async def check(self, server: UpstreamServer, count_failures: bool = True) -> None:
        assert self._client is not None
        url = f"{server.url}{self.settings.health_path}"
        extensions = {}
        if self.settings.tls_server_name is not None:
            extensions["sni_hostname"] = self.settings.tls_server_name
        try:
            response = await self._client.get(url, extensions=extensions)
        except httpx.TimeoutException:
            ok, detail = False, f"health check timed out after {self.settings.health_timeout:g} s"
        except httpx.ConnectError as exc:
            refused = "refused" in str(exc).lower() or isinstance(
                exc.__cause__, ConnectionRefusedError
            )
            ok, detail = False, "connection refused" if refused else f"connect failed: {exc}"
        except httpx.HTTPError as exc:
            ok, detail = False, f"health check failed: {exc.__class__.__name__}: {exc}"
        else:
            ok = status_is_healthy(response.status_code, self.settings.health_status)
            detail = f"health check returned {response.status_code}"
        health = self.health[server]
        if not ok and not count_failures:
            health.last_error, health.last_checked = detail, time.monotonic()
            return
        health.record_check(ok, detail, time.monotonic())
        if ok and health.is_up:
            self.ready.set()
