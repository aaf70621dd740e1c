"""Hot reload: a new config applied to a running gateway process without dropping a request.

Theory of operation.  uvicorn calls an ``AppSwitch``, not the ``GatewayApp`` itself; the
switch reads its ``current`` app once at the start of each request, so a request runs to its
end (WebSocket tunnels included) on the app it started on, and every request after the swap,
also on an open keep-alive connection, gets the new one.  A reload therefore:

1. diffs the old and new settings (``plan_reload``, pure);
2. prepares everything that can fail (new listening sockets, certificates) before touching
   anything, so an error changes nothing and is reported as it is;
3. builds the new ``GatewayApp``: pools whose settings did not change are the same objects
   (health state, connections, checks carry on); a changed pool is new but takes over the
   health state of the servers it kept; the response cache, the access log and the metrics
   are kept when their settings did not change;
4. swaps the app (and the plain-HTTP listener's), rebinds changed listen ports (the old
   listener stops accepting and finishes its requests), points the old TLS context's SNI
   callback at the new certificates;
5. once the old app has no request left, closes what only it used (pools of removed
   servers, a replaced access-log file, the old middlewares' Redis clients).  Until then
   servers a reload removed are shown DRAINING by the admin API.

``[gateway] workers`` and ``[backend]``/``[services]`` need a restart; a reload says so.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import tracing
from gateway.asgi import Receive, Scope, Send
from gateway.background import Background
from gateway.config import ConfigError, Settings, load_settings
from gateway.middleware import close_middlewares
from gateway.upstream.group import Upstream

if TYPE_CHECKING:
    from gateway.server import Gateway

log = logging.getLogger("gateway.reload")

ASGIApp = Callable[[Scope, Receive, Send], Any]


class ReloadError(Exception):
    """The new config cannot be applied; ``errors`` says why, one line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def log_reloaded(path: Path, generation: int, plan: ReloadPlan) -> list[str]:
    """Log an applied reload (one process's or the whole worker pool's) and what it could
    not apply; returns those warnings, the answer of ``pygateway reload``."""
    log.info("configuration reloaded from %s (generation %d): %s", path, generation, plan.summary())
    for warning in plan.needs_restart:
        log.warning("%s", warning)
    return plan.needs_restart


async def reload_logged(reload: Callable[[], Awaitable[object]]) -> None:
    """A reload asked for by SIGHUP: nobody waits for the answer, so a refusal is logged."""
    try:
        await reload()
    except ReloadError as exc:
        for line in exc.errors:
            log.error("reload refused: %s", line)
        log.error("the configuration was not reloaded; the previous one keeps serving")


class AppSwitch:
    """The ASGI app a listener serves: whichever app is ``current`` when a request starts.

    Counts each app's requests in flight so a replaced app's resources are released only
    once its last request has finished (``drained``)."""

    __slots__ = ("current", "_in_flight", "_idle")

    def __init__(self, app: ASGIApp) -> None:
        self.current = app
        self._in_flight: dict[int, int] = {}
        self._idle: dict[int, asyncio.Event] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.current
        key = id(app)
        in_flight = self._in_flight
        in_flight[key] = in_flight.get(key, 0) + 1
        try:
            await app(scope, receive, send)
        finally:
            left = in_flight[key] - 1
            if left:
                in_flight[key] = left
            else:
                del in_flight[key]
                idle = self._idle.pop(key, None)
                if idle is not None:
                    idle.set()

    def in_flight(self, app: ASGIApp) -> int:
        return self._in_flight.get(id(app), 0)

    async def drained(self, app: ASGIApp) -> None:
        """Return once no request is running on ``app`` (call after it was replaced)."""
        if not self.in_flight(app):
            return
        idle = self._idle.setdefault(id(app), asyncio.Event())
        await idle.wait()


# --- what changed ---------------------------------------------------------------------------

LISTENER_KEYS = (
    "host",
    "http_port",
    "https_port",
    "http2",
    "max_header_bytes",
    "keepalive_timeout",
    "graceful_timeout",
    "header_timeout",
    "body_timeout",
    "max_connections",
    "keepalive_requests",
)
ACCESS_LOG_KEYS = (
    "access_log",
    "access_log_format",
    "access_log_max_bytes",
    "access_log_keep_days",
)


@dataclass
class ReloadPlan:
    """How a new config differs from the running one (``plan_reload``)."""

    kept_upstreams: set[str] = field(default_factory=set)
    changed_upstreams: set[str] = field(default_factory=set)
    added_upstreams: set[str] = field(default_factory=set)
    removed_upstreams: set[str] = field(default_factory=set)
    rebind_https: bool = False
    rebind_http: bool = False
    listeners: bool = False  # new uvicorn servers (on new or the same sockets)
    tls: bool = False
    admin: bool = False
    access_log: bool = False
    cache: bool = False
    routes: bool = False
    needs_restart: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.routes:
            parts.append("routes")
        for sign, names in (
            ("+", self.added_upstreams),
            ("-", self.removed_upstreams),
            ("~", self.changed_upstreams),
        ):
            parts += [f"upstream {sign}{name}" for name in sorted(names)]
        for flag, name in (
            (self.rebind_https, "https_port"),
            (self.rebind_http, "http_port"),
            (self.listeners and not (self.rebind_https or self.rebind_http), "listeners"),
            (self.tls, "certificates"),
            (self.admin, "admin"),
            (self.access_log, "access log"),
            (self.cache, "cache"),
        ):
            if flag:
                parts.append(name)
        return ", ".join(parts) or "nothing the gateway serves by"


def plan_reload(old: Settings, new: Settings) -> ReloadPlan:
    """What a reload from ``old`` to ``new`` has to do (pure; see ``ReloadPlan``)."""
    plan = ReloadPlan()
    for name, upstream in new.upstreams.items():
        before = old.upstreams.get(name)
        if before is None:
            plan.added_upstreams.add(name)
        elif before == upstream:
            plan.kept_upstreams.add(name)
        else:
            plan.changed_upstreams.add(name)
    plan.removed_upstreams = set(old.upstreams) - set(new.upstreams)
    g0, g1 = old.gateway, new.gateway
    plan.rebind_https = (g0.host, g0.https_port) != (g1.host, g1.https_port)
    plan.rebind_http = (g0.host, g0.http_port) != (g1.host, g1.http_port)
    plan.listeners = any(getattr(g0, k, None) != getattr(g1, k, None) for k in LISTENER_KEYS)
    plan.tls = old.tls != new.tls or (g0.hostnames, g0.http2) != (g1.hostnames, g1.http2)
    plan.admin = old.admin != new.admin
    plan.access_log = any(getattr(g0, k) != getattr(g1, k) for k in ACCESS_LOG_KEYS)
    plan.cache = old.cache != new.cache
    plan.routes = old.routes != new.routes or old.middlewares != new.middlewares
    if g0.workers != g1.workers:
        plan.needs_restart.append(
            f"[gateway] workers = {g1.workers} applies at the next restart (running {g0.workers})"
        )
    return plan


def carry_health(old: Upstream, new: Upstream) -> int:
    """Give ``new``'s servers that ``old`` also had the state ``old`` knew (UP/DOWN, the
    failure counts, the last check); how many were carried.  A pool with a carried server
    that is UP after a real check serves at once instead of holding requests for a first
    check."""
    carried = 0
    for server, health in new.health.items():
        before = old.health.get(server)
        if before is None:
            continue
        health.status = before.status
        health.consecutive_failures = before.consecutive_failures
        health.consecutive_successes = before.consecutive_successes
        health.last_error = before.last_error
        health.last_checked = before.last_checked
        health.last_change = before.last_change
        health.recent_failures = before.recent_failures.copy()
        carried += 1
        if health.is_up and health.last_checked is not None:
            new.ready.set()
    return carried


def load_new_settings(path: Any) -> Settings:
    """The config file read again; ReloadError with every problem when it is invalid."""
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        raise ReloadError(exc.errors) from None
    return tracing.forced(settings)


# --- applying it in one process -------------------------------------------------------------


class Reloader:
    """Applies a new config to one running ``Gateway`` (see the module docstring)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._lock = asyncio.Lock()  # one reload at a time
        self._background = Background()

    async def reload_file(self) -> list[str]:
        """SIGHUP / POST /api/reload in a single-process gateway: read the file, apply it.
        Returns warnings; raises ReloadError (nothing changed) when it cannot be applied."""
        new = load_new_settings(self.gateway.settings.path)
        return await self.apply(new)

    async def apply(
        self, new: Settings, sockets: tuple[socket.socket, socket.socket] | None = None
    ) -> list[str]:
        """Apply ``new``; ``sockets`` are listeners a parent bound for changed ports (with
        workers), else this process binds what changed itself."""
        async with self._lock:
            gw = self.gateway
            old = gw.settings
            plan = plan_reload(old, new)
            # 1. Everything that can fail, before anything changes.
            prepared = await gw.prepare_reload(new, plan, sockets)
            # 2. The new pools and app.
            upstreams: dict[str, Upstream] = {}
            started: list[Upstream] = []
            for name, settings in new.upstreams.items():
                if name in plan.kept_upstreams:
                    upstreams[name] = gw.upstreams[name]
                    continue
                upstream = Upstream(settings)
                if name in plan.changed_upstreams:
                    carry_health(gw.upstreams[name], upstream)
                upstreams[name] = upstream
                started.append(upstream)
            for upstream in started:
                upstream.start(new.gateway.ready_timeout)
            retired = [u for name, u in gw.upstreams.items() if upstreams.get(name) is not u]
            old_app = gw.app
            new_app = gw.build_app(new, upstreams, keep_access_log=not plan.access_log)
            # 3. The swap: new requests see the new config from here on.
            gw.commit_reload(new, upstreams, new_app, plan, prepared)
            for upstream in retired:
                await upstream.checker.stop()
                gw.retired_upstreams.append(upstream)
            self._background.spawn(self._release(old_app, retired))
            return log_reloaded(new.path, gw.generation, plan)

    async def _release(self, old_app: Any, retired: list[Upstream]) -> None:
        """Once no request runs on the replaced app: close what only it used."""
        gw = self.gateway
        await gw.switch.drained(old_app)
        for upstream in retired:
            upstream.close()
            if upstream in gw.retired_upstreams:
                gw.retired_upstreams.remove(upstream)
        if old_app.access_log is not gw.app.access_log:
            old_app.access_log.close()
        if old_app.cache is not None and old_app.cache is not gw.app.cache:
            await old_app.cache.store.aclose()  # a Redis connection pool, a memo of entries
        # Middlewares are built anew by every reload: the old ones' Redis clients go.
        await close_middlewares(old_app.middlewares.values())
