"""Several gateway processes sharing the listeners (Nginx's ``worker_processes``).

With ``[gateway] workers = N > 1`` this parent process creates the certificates, binds both
listening sockets, and spawns N workers (the ``spawn`` start method, as uvicorn's supervisor)
that each run the whole gateway on those sockets; the kernel spreads new connections over
them.  Each worker has its own connection pools, health checks and response cache (Nginx
shares its cache through a memory zone; we do not, so a cached response is stored once per
worker).  Dead workers are replaced; SIGTERM/SIGINT stop them gracefully, and any still
running after the grace period are killed.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
import socket
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from gateway.config import Settings
from gateway.listeners import bind_listeners
from gateway.tls.certs import ensure_certificates

log = logging.getLogger("gateway")
RESTART_DELAY = 1.0


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


def run_workers(settings: Settings) -> None:
    g = settings.gateway
    ensure_certificates(settings.tls, g.hostnames)  # once, before any worker reads them
    sockets = bind_listeners(g)
    context = multiprocessing.get_context("spawn")
    processes: dict[int, BaseProcess] = {}
    # A pipe per worker says "ready"; unlike an Event it needs no semaphore, hence no
    # multiprocessing resource-tracker process.
    ready: dict[int, multiprocessing.connection.Connection] = {}
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    def spawn(index: int) -> None:
        reader, writer = context.Pipe(duplex=False)
        ready[index] = reader
        process = context.Process(
            target=_worker_main,
            args=(settings, sockets, index, writer),
            name=f"gateway-worker-{index}",
        )
        process.start()
        writer.close()
        processes[index] = process
        log.info("gateway worker %d started (pid %s)", index, process.pid)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index in range(g.workers):
            spawn(index)
        waiting = set(ready.values())
        deadline = time.monotonic() + 60
        while waiting and not stopping and time.monotonic() < deadline:
            for conn in multiprocessing.connection.wait(list(waiting), timeout=0.5):
                waiting.discard(conn)
        if not waiting:
            from gateway.server import ready_line

            log.info("%s", ready_line(settings))
        while not stopping:
            sentinels = {p.sentinel: i for i, p in processes.items()}
            for sentinel in multiprocessing.connection.wait(list(sentinels), timeout=0.5):
                index = sentinels[sentinel]  # type: ignore[index]
                if stopping:
                    break
                code = processes[index].exitcode
                log.warning("gateway worker %d died (exit %s); restarting", index, code)
                time.sleep(RESTART_DELAY)  # a crash loop must not spin the CPU
                spawn(index)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop(list(processes.values()), settings.gateway.graceful_timeout + 5)
        for sock in sockets:
            sock.close()
        log.info("gateway stopped")


def _stop(processes: list[BaseProcess], grace: float) -> None:
    for process in processes:
        if process.is_alive() and process.pid is not None:
            process.terminate()  # SIGTERM: each worker finishes its in-flight requests
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.warning("gateway worker %s did not stop in time; killing it", process.pid)
            process.kill()
            process.join()
