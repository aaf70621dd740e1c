"""Run the gateway: certificates, both listeners, health checkers, graceful shutdown.

Both listeners are uvicorn servers sharing one event loop (uvloop when installed).  uvicorn's
own signal capture is replaced by ours, because two servers each installing handlers would
fight over them: SIGTERM/SIGINT set ``should_exit`` on both, they stop accepting, finish
in-flight requests within ``graceful_timeout``, and the process exits.  A second SIGINT forces
the exit, as in uvicorn.  SIGHUP reloads the config (``gateway.runtime.reload``; with several
workers the parent process coordinates it, see ``gateway.runtime.control``) and SIGUSR1
reopens the access-log file.  The admin listener (``[admin]``, ``gateway.admin``) runs here
too when this is the only gateway process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import uvicorn

from gateway.admin.metrics import Metrics
from gateway.app import GatewayApp
from gateway.background import Background
from gateway.client_limits import ClientLimits
from gateway.config import Settings
from gateway.handlers.redirect import HTTPSRedirectApp
from gateway.http2.limits import DEFAULT_HEADER_TIMEOUT, Http2Limits
from gateway.listener import ListenerState, http_protocol_class, traced
from gateway.listeners import bind, bind_listeners
from gateway.memory import fix_mmap_threshold, freeze_startup_heap
from gateway.middleware import close_middlewares
from gateway.runtime.reload import AppSwitch, Reloader, ReloadError, ReloadPlan, reload_logged
from gateway.tls.service import TLSService
from gateway.tls.transport import TLSServer
from gateway.upstream.group import Upstream

log = logging.getLogger("gateway")


class _Server(uvicorn.Server):
    """A uvicorn server on sockets we bound, whose TLS connections are ``TLSServer``'s
    (``gateway.tls.transport``: OpenSSL on the socket, as in nginx, rather than uvloop's
    memory-BIO transport) and whose handshakes are under ``header_timeout``: the protocol (and
    its header timer) only exists once the handshake is done, and nginx's
    ``client_header_timeout`` covers the handshake too.
    """

    def __init__(self, config: uvicorn.Config, handshake_timeout: float) -> None:
        super().__init__(config)
        self.handshake_timeout = handshake_timeout
        self.server_state: ListenerState = ListenerState()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Before uvicorn asks the connections it knows to finish: one whose TLS handshake
        # ends after that sees the flag (gateway.listener.ListenerState).
        self.server_state.draining = True
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals are handled by Gateway, for both servers at once

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        assert sockets is not None, "the gateway always binds its own sockets (listeners.py)"
        config = self.config
        await self.lifespan.startup()  # lifespan="off": nothing to run, kept for uvicorn's state

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )

        loop = asyncio.get_running_loop()
        if config.ssl:  # OpenSSL on the socket itself (gateway.tls.transport)
            self.servers = [
                TLSServer(  # type: ignore[misc]
                    loop, create_protocol, sock, config.ssl, self.handshake_timeout, config.backlog
                )
                for sock in sockets
            ]
        else:
            self.servers = [
                await loop.create_server(create_protocol, sock=sock, backlog=config.backlog)
                for sock in sockets
            ]
        self.started = True


class Gateway:
    def __init__(
        self,
        settings: Settings,
        on_ready: Callable[[], None] | None = None,
        generation: int = 0,
        control_path: str | None = None,
    ) -> None:
        self.settings = settings
        self.on_ready = on_ready
        self.metrics = Metrics()  # one per process, kept across reloads
        self.upstreams = {name: Upstream(u) for name, u in settings.upstreams.items()}
        self.app = self.build_app(settings, self.upstreams, keep_access_log=False)
        self.switch = AppSwitch(self.app)  # what the HTTPS listener serves (hot reload)
        self.redirect = self._redirect_app(settings)
        self.servers: list[_Server] = []
        self.ready = asyncio.Event()
        self.pid = os.getpid()
        self.worker: int | None = None
        self.generation = generation  # reloads applied (the parent's count with workers)
        self.retired_upstreams: list[Upstream] = []  # replaced by a reload, draining
        self.reloader = Reloader(self)
        self.control_path = control_path  # a worker's control socket (runtime/control.py)
        self._stopping = asyncio.Event()
        self._server_tasks: dict[_Server, asyncio.Task[None]] = {}
        self._background = Background()
        self.admin: Any = None  # gateway.admin.server.AdminServer when this process runs it

    def build_app(
        self, settings: Settings, upstreams: dict[str, Upstream], keep_access_log: bool
    ) -> GatewayApp:
        """A GatewayApp for ``settings`` sharing this process's metrics (and, on a reload
        that did not change them, the current access log and response cache)."""
        current: GatewayApp | None = getattr(self, "app", None)
        cache = None
        if current is not None and current.settings.cache == settings.cache:
            cache = current.cache
        return GatewayApp(
            settings,
            upstreams,
            access_log=current.access_log if current is not None and keep_access_log else None,
            cache=cache,
            metrics=self.metrics,
        )

    def _redirect_app(self, settings: Settings) -> HTTPSRedirectApp:
        g = settings.gateway
        return HTTPSRedirectApp(g.hostnames, g.https_port, g.redirect_status, self.app.access_log)

    def _config(self, app: Any, port: int, ssl_context: ssl.SSLContext | None) -> uvicorn.Config:
        g = self.settings.gateway
        factory = None
        if ssl_context is not None:

            def factory(config: uvicorn.Config, default: object) -> ssl.SSLContext:
                return ssl_context

        return uvicorn.Config(
            app,
            host=g.host,
            port=port,
            http=traced(
                http_protocol_class(
                    g.max_header_bytes,
                    self._http2_limits(ssl_context),
                    ClientLimits.from_settings(g),
                ),
                g.trace and ssl_context is not None,  # the HTTPS listener's requests only
            ),
            ws="none",
            proxy_headers=False,  # X-Forwarded-* from clients are handled (not trusted) by us
            lifespan="off",
            access_log=False,  # ours is richer (upstream, bytes, duration)
            log_config=None,
            server_header=False,
            date_header=ssl_context is None,  # the proxy forwards the upstream's Date
            timeout_keep_alive=int(max(1, g.keepalive_timeout)),
            timeout_graceful_shutdown=int(g.graceful_timeout),
            ssl_context_factory=factory,
            backlog=2048,
        )

    def _http2_limits(self, ssl_context: ssl.SSLContext | None) -> Http2Limits | None:
        """HTTP/2 on the TLS listener when ``[gateway] http2`` (ALPN decides per connection)."""
        g = self.settings.gateway
        if ssl_context is None or not g.http2:
            return None
        return Http2Limits(
            max_header_bytes=g.max_header_bytes,
            idle_timeout=g.keepalive_timeout,
            header_timeout=getattr(g, "header_timeout", DEFAULT_HEADER_TIMEOUT),
            body_timeout=g.body_timeout,
        )

    async def serve(
        self, sockets: tuple[socket.socket, socket.socket] | None = None, worker: int | None = None
    ) -> None:
        """Serve until shut down.  ``sockets`` (https, http) are listeners bound by the
        parent process when running as one of several workers (``gateway.workers``)."""
        settings = self.settings
        g = settings.gateway
        # Certificates per name (SNI), renewed while running; ACME answers on the HTTP port.
        self.tls = TLSService(settings)
        ssl_context = self.tls.start()
        self.ssl_context = ssl_context
        self.worker = worker
        self.http_switch = AppSwitch(self.tls.http_app(self.redirect))
        if sockets is None:
            sockets = bind_listeners(g)
        self.sockets = sockets

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.shutdown, sig)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self._on_hup)
            loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)

        for upstream in self.upstreams.values():
            upstream.start(g.ready_timeout)
        self._start_servers(settings, sockets)
        announce = asyncio.create_task(self._announce())
        control = None
        if self.control_path is not None:
            from gateway.runtime.control import ControlServer

            control = ControlServer(self.control_path, self, loop)
            control.start()
        if worker is None and settings.admin is not None and settings.admin.enabled:
            from gateway.admin.server import AdminServer, LocalSource

            self.admin = AdminServer(LocalSource(self))
            self.admin.start(settings)
        try:
            await self._stopping.wait()
            await asyncio.gather(*self._server_tasks.values(), return_exceptions=True)
        finally:
            announce.cancel()
            if control is not None:
                control.stop()
            if self.admin is not None:
                await self.admin.stop()
            await self.tls.stop()
            for upstream in [*self.upstreams.values(), *self.retired_upstreams]:
                await upstream.checker.stop()
                upstream.close()
            self.app.access_log.close()
            if self.app.cache is not None:
                await self.app.cache.store.aclose()  # a Redis store's connection pool
            await close_middlewares(self.app.middlewares.values())  # rate_limit's Redis client
        log.info("gateway stopped")

    def _start_servers(
        self, settings: Settings, sockets: tuple[socket.socket, socket.socket]
    ) -> None:
        """Both listeners on ``sockets``; on a reload the previous ones stop accepting and
        finish their requests (``_retire_servers``)."""
        g = settings.gateway
        handshake_timeout = max(g.header_timeout, 0.1)  # asyncio takes only a positive one
        https = _Server(
            self._config(self.switch, g.https_port, self.ssl_context), handshake_timeout
        )
        http = _Server(self._config(self.http_switch, g.http_port, None), handshake_timeout)
        self.servers = [https, http]
        for server, sock in ((https, sockets[0]), (http, sockets[1])):
            task = asyncio.create_task(server.serve([sock]))
            self._server_tasks[server] = task
            task.add_done_callback(functools.partial(self._server_done, server))

    def _server_done(self, server: _Server, task: asyncio.Task[None]) -> None:
        self._server_tasks.pop(server, None)
        if server in self.servers and not self._stopping.is_set():
            log.error("a listener stopped unexpectedly; shutting down")
            self.shutdown()

    def connections_active(self) -> int:
        """Open client connections (HTTP/1.1 and HTTP/2) on every listener of this process."""
        return sum(len(server.server_state.connections) for server in self._server_tasks)

    # --- reload and log reopening (signals; gateway.runtime.reload does the work) --------

    def _on_hup(self) -> None:
        if self.control_path is not None:
            log.warning("SIGHUP to a worker is ignored: send it to the gateway's main process")
            return
        self._background.spawn(reload_logged(self.reloader.reload_file))

    def reopen_logs(self) -> None:
        """SIGUSR1: write to the access-log file the path names now (after logrotate)."""
        self.app.access_log.reopen()
        log.info("access log reopened")

    async def prepare_reload(
        self,
        new: Settings,
        plan: ReloadPlan,
        sockets: tuple[socket.socket, socket.socket] | None,
    ) -> dict[str, Any]:
        """What a reload needs that can fail: listening sockets for changed ports, the new
        certificates, the admin listener.  ReloadError (and nothing changed) if any fails."""
        from gateway.listeners import ListenError
        from gateway.tls.certs import CertificateError

        prepared: dict[str, Any] = {}
        g = new.gateway
        opened: list[socket.socket] = []
        try:
            if plan.listeners:
                if sockets is None:
                    https = bind(g.host, g.https_port, "https_port") if plan.rebind_https else None
                    if https is not None:
                        opened.append(https)
                    http = bind(g.host, g.http_port, "http_port") if plan.rebind_http else None
                    if http is not None:
                        opened.append(http)
                    # An unchanged port keeps its socket: a copy for the new listener, as
                    # the old one closes its own when it stops.
                    sockets = (https or _dup(self.sockets[0]), http or _dup(self.sockets[1]))
                    opened[:] = list(sockets)
                prepared["sockets"] = sockets
            elif sockets is not None:
                for sock in sockets:  # the parent's copies, not needed: same listeners
                    sock.close()
            if plan.tls:
                tls = TLSService(new)
                prepared["tls"] = tls
                prepared["ssl_context"] = tls.start()
            if (
                plan.admin
                and self.admin is not None
                or (self.worker is None and self.admin is None and new.admin and new.admin.enabled)
            ):
                from gateway.admin.server import AdminServer, LocalSource

                admin = self.admin or AdminServer(LocalSource(self))
                prepared["admin"] = (admin, admin.prepare(new))
        except (ListenError, CertificateError, ReloadError) as exc:
            for sock in opened:
                sock.close()
            if "tls" in prepared:
                self._background.spawn(prepared["tls"].stop())
            if isinstance(exc, ReloadError):
                raise
            prefix = "[tls]: " if isinstance(exc, CertificateError) else ""
            raise ReloadError([f"{prefix}{exc}"]) from None
        return prepared

    def commit_reload(
        self,
        new: Settings,
        upstreams: dict[str, Upstream],
        app: GatewayApp,
        plan: ReloadPlan,
        prepared: dict[str, Any],
    ) -> None:
        """Swap to the new config (cannot fail: ``prepare_reload`` did what could)."""
        old_tls = self.tls
        if "tls" in prepared:
            self.tls = prepared["tls"]
            # Open listeners keep their context; its SNI callback now picks from the new
            # certificates, so every new handshake gets them.
            self.ssl_context.sni_callback = prepared["ssl_context"].sni_callback
            self._background.spawn(old_tls.stop())
        self.settings = new
        self.upstreams = upstreams
        self.app = app
        self.redirect = self._redirect_app(new)
        self.switch.current = app
        self.http_switch.current = self.tls.http_app(self.redirect)
        self.generation += 1
        if "sockets" in prepared:
            previous = self.servers
            if "tls" in prepared:
                self.ssl_context = prepared["ssl_context"]
            self.sockets = prepared["sockets"]
            self._start_servers(new, self.sockets)
            for server in previous:
                server.should_exit = True  # stops accepting; finishes its requests
        if "admin" in prepared:
            admin, binding = prepared["admin"]
            self.admin = admin
            self._background.spawn(admin.restart(new, binding))

    def upstream_status(self) -> list[dict[str, Any]]:
        """Every server of every pool with its UP/DOWN state: the one place to read it."""
        return [upstream.snapshot() for upstream in self.upstreams.values()]

    def shutdown(self, sig: int | None = None) -> None:
        self._stopping.set()
        if any(s.should_exit for s in self.servers):
            if sig == signal.SIGINT:
                log.warning("second interrupt: forcing exit")
                for server in self.servers:
                    server.force_exit = True
            return
        log.info(
            "shutting down: finishing in-flight requests (up to %gs)",
            self.settings.gateway.graceful_timeout,
        )
        for server in self._server_tasks:
            server.should_exit = True

    async def _announce(self) -> None:
        while not all(s.started for s in self.servers):
            await asyncio.sleep(0.01)
        await self._wait_for_upstreams()
        freeze_startup_heap()  # before the first request: p99 (gateway.memory)
        self.ready.set()
        if self.on_ready is not None:
            self.on_ready()
        if self.worker is not None:
            log.debug("gateway worker %d ready", self.worker)
            return
        log.info("%s", ready_line(self.settings))

    async def _wait_for_upstreams(self) -> None:
        """ "Ready" means ready: wait (up to ``ready_timeout``) until every pool has a server
        that passed a health check, and name the pools that did not."""
        pending = [u for u in self.upstreams.values() if not u.ready.is_set()]
        if pending:
            await asyncio.wait(
                [asyncio.create_task(u.ready.wait()) for u in pending],
                timeout=self.settings.gateway.ready_timeout,
            )
        for upstream in pending:
            if not upstream.ready.is_set():
                errors = {h.last_error for h in upstream.health.values() if h.last_error}
                log.warning(
                    "upstream %r has no healthy server yet (%s); serving anyway",
                    upstream.name,
                    "; ".join(sorted(errors)) or "no check has finished",
                )


def _pygateway() -> str:
    """The pygateway command as the user can type it: the script next to this interpreter
    (``.venv/bin/pygateway`` under ``make run``), else the bare name."""
    script = Path(sys.executable).with_name("pygateway")
    return str(script) if script.exists() else "pygateway"


def ready_line(settings: Settings) -> str:
    """The start-up banner: where to go, and how to make the browser trust it."""
    g = settings.gateway
    host = f"[{g.host}]" if ":" in g.host else g.host
    workers = f" ({g.workers} workers)" if g.workers > 1 else ""
    name = next((h for h in g.hostnames if not h.startswith("*.")), "localhost")
    line = (
        f"gateway ready: https://{host}:{g.https_port} (https://{name}:{g.https_port}/)"
        f" and http://{host}:{g.http_port} -> https{workers}"
    )
    if settings.tls.cert_file is None:
        ca = settings.tls.dir / "ca.pem"
        line += (
            f"\n  local CA: {ca}; trust it once with: {_pygateway()} trust --config {settings.path}"
            f"\n  or per command: curl --cacert {ca} https://{name}:{g.https_port}/"
        )
    return line


def run(
    settings: Settings,
    sockets: tuple[socket.socket, socket.socket] | None = None,
    worker: int | None = None,
    on_ready: Callable[[], None] | None = None,
    generation: int = 0,
    control_path: str | None = None,
) -> None:
    """Run until a signal stops the gateway (uvloop when installed)."""
    if settings.gateway.workers > 1 and sockets is None:
        from gateway.workers import run_workers

        run_workers(settings)
        return
    fix_mmap_threshold()  # idle TLS connections: ~33 KiB each instead of ~50 (gateway.memory)
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    if sockets is None:
        sockets = bind_listeners(settings.gateway)  # a busy port: one ListenError line
        if settings.admin is not None and settings.admin.enabled:
            from gateway.admin.server import check_admin_port

            check_admin_port(settings)  # a busy admin port: one ListenError line too
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(Gateway(settings, on_ready, generation, control_path).serve(sockets, worker))


def _dup(sock: socket.socket) -> socket.socket:
    return socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
