"""Run the gateway: certificates, both listeners, health checkers, graceful shutdown.

Both listeners are uvicorn servers sharing one event loop (uvloop when installed).  uvicorn's
own signal capture is replaced by ours, because two servers each installing handlers would
fight over them: SIGTERM/SIGINT set ``should_exit`` on both, they stop accepting, finish
in-flight requests within ``graceful_timeout``, and the process exits.  A second SIGINT forces
the exit, as in uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from gateway.app import GatewayApp
from gateway.config import Settings
from gateway.handlers.redirect import HTTPSRedirectApp
from gateway.http2.limits import DEFAULT_HEADER_TIMEOUT, Http2Limits
from gateway.listener import http_protocol_class
from gateway.listeners import bind_listeners
from gateway.tls.service import TLSService
from gateway.upstream.group import Upstream

log = logging.getLogger("gateway")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals are handled by Gateway, for both servers at once


class Gateway:
    def __init__(self, settings: Settings, on_ready: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.on_ready = on_ready
        self.upstreams = {name: Upstream(u) for name, u in settings.upstreams.items()}
        self.app = GatewayApp(settings, self.upstreams)
        g = settings.gateway
        self.redirect = HTTPSRedirectApp(g.hostnames, g.https_port, g.redirect_status, g.access_log)
        self.servers: list[_Server] = []
        self.ready = asyncio.Event()

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
            http=http_protocol_class(g.max_header_bytes, self._http2_limits(ssl_context)),
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
        self.worker = worker

        https = _Server(self._config(self.app, g.https_port, ssl_context))
        http = _Server(self._config(self.tls.http_app(self.redirect), g.http_port, None))
        self.servers = [https, http]
        https_sockets = [sockets[0]] if sockets else None
        http_sockets = [sockets[1]] if sockets else None

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.shutdown, sig)

        for upstream in self.upstreams.values():
            upstream.start(g.ready_timeout)
        announce = asyncio.create_task(self._announce())
        try:
            await asyncio.gather(https.serve(https_sockets), http.serve(http_sockets))
        finally:
            announce.cancel()
            await self.tls.stop()
            for upstream in self.upstreams.values():
                await upstream.checker.stop()
                upstream.close()
            self.app.access_log.flush()
            self.redirect.access_log.flush()
        log.info("gateway stopped")

    def upstream_status(self) -> list[dict[str, Any]]:
        """Every server of every pool with its UP/DOWN state: the one place to read it."""
        return [upstream.snapshot() for upstream in self.upstreams.values()]

    def shutdown(self, sig: int | None = None) -> None:
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
        for server in self.servers:
            server.should_exit = True

    async def _announce(self) -> None:
        while not all(s.started for s in self.servers):
            await asyncio.sleep(0.01)
        await self._wait_for_upstreams()
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
            f"\n  local CA: {ca}; trust it once with: pygateway trust --config {settings.path}"
            f"\n  or per command: curl --cacert {ca} https://{name}:{g.https_port}/"
        )
    return line


def run(
    settings: Settings,
    sockets: tuple[socket.socket, socket.socket] | None = None,
    worker: int | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run until a signal stops the gateway (uvloop when installed)."""
    if settings.gateway.workers > 1 and sockets is None:
        from gateway.workers import run_workers

        run_workers(settings)
        return
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    if sockets is None:
        sockets = bind_listeners(settings.gateway)  # a busy port: one ListenError line
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(Gateway(settings, on_ready).serve(sockets, worker))
