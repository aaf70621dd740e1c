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

import contextlib
import logging
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from types import FrameType

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
    control: tuple[str, int],
    index: int,
    ready: multiprocessing.connection.Connection,
) -> None:
    from gateway.cli import configure_logging
    from gateway.server import run

    configure_logging()
    # A terminal's Ctrl-C reaches every process of the group: each worker starts its own
    # graceful shutdown, and the parent's SIGTERM that follows changes nothing.
    # The parent coordinates reloads and forwards SIGUSR1 (gateway/runtime/control.py); until
    # the event loop takes them over, neither signal may kill a worker that is starting.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    path, generation = control
    run(
        settings,
        sockets=sockets,
        worker=index,
        on_ready=lambda: ready.send(index),
        generation=generation,
        control_path=path,
    )


def run_workers(settings: Settings) -> int:
    """Bind, spawn ``[gateway] workers`` processes, supervise them until a signal stops them."""
    from gateway.runtime.control import ParentControl, WorkerPool
    from gateway.server import ready_line

    g = settings.gateway
    ensure_certificates(settings.tls, g.hostnames)  # once, before any worker reads them
    sockets = bind_listeners(g)
    if settings.admin is not None and settings.admin.enabled:
        from gateway.admin.server import check_admin_port

        check_admin_port(settings)
    control_dir = Path(tempfile.mkdtemp(prefix="pygateway-control-"))  # mode 0700
    supervisor: Supervisor | None = None

    def worker_pids() -> dict[int, int]:
        workers = supervisor.workers if supervisor is not None else []
        return {w.index: w.pid for w in workers if w.pid is not None}

    # The admin API, reloads and the control sockets (gateway/runtime/control.py); a reload
    # changes what ``launch`` starts replacements with.
    pool = WorkerPool(control_dir, settings, sockets, worker_pids)

    def launch(index: int) -> Launched:
        # A pipe per worker says "ready"; unlike an Event it needs no semaphore, hence no
        # multiprocessing resource-tracker process.
        control = (pool.path(index), pool.generation)
        return spawn_target(
            _worker_main, (pool.settings, pool.sockets, control, index), f"gateway-worker-{index}"
        )

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
    parent = ParentControl(pool)
    parent.start()
    supervisor.on_hup = parent.reload_soon

    def reopen(signum: int, frame: FrameType | None) -> None:
        for pid in worker_pids().values():  # each worker reopens its own descriptor
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)

    previous_usr1 = signal.signal(signal.SIGUSR1, reopen)
    try:
        return supervisor.run()
    finally:
        signal.signal(signal.SIGUSR1, previous_usr1)
        parent.stop()
        for sock in pool.sockets:
            sock.close()
        shutil.rmtree(control_dir, ignore_errors=True)
        log.info("gateway stopped")
