"""Several gateway processes sharing the listeners (Nginx's ``worker_processes``).

With ``[gateway] workers = N > 1`` this parent process creates the certificates, binds both
listening sockets, and spawns N workers (the ``spawn`` start method, as uvicorn's supervisor)
that each run the whole gateway on those sockets; the kernel spreads new connections over
them.  Each worker has its own connection pools, health checks and response cache (Nginx
shares its cache through a memory zone; we do not, so a cached response is stored once per
worker).  Supervision is the shared ``gateway/runtime/supervisor.py``: dead workers are
replaced (with back-off), SIGTERM/SIGINT stop them gracefully, and any still running after the
grace period are killed.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import socket

from gateway.config import Settings
from gateway.listeners import bind_listeners
from gateway.runtime.children import spawn_target
from gateway.runtime.supervisor import Group, Launched, Supervisor
from gateway.tls.certs import ensure_certificates

log = logging.getLogger("gateway")
START_TIMEOUT = 60.0


def _worker_main(
    settings: Settings,
    sockets: tuple[socket.socket, socket.socket],
    index: int,
    ready: multiprocessing.connection.Connection,
) -> None:
    from gateway.cli import configure_logging
    from gateway.server import run

    configure_logging()
    # A terminal's Ctrl-C reaches every process of the group: each worker starts its own
    # graceful shutdown, and the parent's SIGTERM that follows changes nothing.
    run(settings, sockets=sockets, worker=index, on_ready=lambda: ready.send(index))


def run_workers(settings: Settings) -> int:
    """Bind, spawn ``[gateway] workers`` processes, supervise them until a signal stops them."""
    from gateway.server import ready_line

    g = settings.gateway
    ensure_certificates(settings.tls, g.hostnames)  # once, before any worker reads them
    sockets = bind_listeners(g)

    def launch(index: int) -> Launched:
        # A pipe per worker says "ready"; unlike an Event it needs no semaphore, hence no
        # multiprocessing resource-tracker process.
        return spawn_target(_worker_main, (settings, sockets, index), f"gateway-worker-{index}")

    group = Group(
        name="gateway",
        label="gateway worker",
        launch=launch,
        ports=[None] * g.workers,  # they share the listeners: nothing per worker to probe
        start_timeout=START_TIMEOUT,
        grace=g.graceful_timeout,
        # Configuration reload belongs to the gateway itself, not to its supervisor.
        on_hup="ignore",
    )
    supervisor = Supervisor([group], log)
    supervisor.on_all_up = lambda: log.info("%s", ready_line(settings))
    try:
        return supervisor.run()
    finally:
        for sock in sockets:
            sock.close()
        log.info("gateway stopped")
