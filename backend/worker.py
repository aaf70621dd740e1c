"""One worker process: a uvicorn server running the app on ``base_port + index``.

The supervisor (``supervisor.py``) starts this with the ``spawn`` context.  The worker tells the
supervisor it is listening by sending ``READY`` on a pipe once uvicorn's start-up (lifespan:
migrations, database pool, secret) and bind have succeeded.

Signals: the supervisor conducts every shutdown.  A worker stops gracefully on SIGTERM (in-flight
requests get ``graceful_timeout`` seconds), ignores SIGINT (Ctrl-C reaches the whole process
group; the supervisor turns it into SIGTERMs) and SIGHUP (a rolling restart is the supervisor's
job).  If the supervisor dies, even by SIGKILL, a watcher thread notices at once (the parent's
process sentinel becomes readable) and the worker shuts itself down: no orphans.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import multiprocessing.connection
import signal
import socket
import sys
import threading
from collections.abc import Generator
from multiprocessing.connection import Connection

import uvicorn

from gateway.config import Settings

from .app import create_app

READY = "ready"

log = logging.getLogger("backend.worker")


class WorkerServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready: Connection | None = None) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit and self._ready is not None:
            with contextlib.suppress(OSError):  # supervisor gone: the parent watcher stops us
                self._ready.send(READY)
            self._ready.close()
            self._ready = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Replaces uvicorn's version, which also takes SIGINT and re-raises the signal after
        # shutdown (so the exit status would be "killed by SIGTERM" instead of 0).
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, self.handle_exit),
            signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _exit_with_parent(server: uvicorn.Server) -> None:
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        log.warning("the supervisor is gone; shutting down")
        server.should_exit = True

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_worker(settings: Settings, index: int, ready: Connection | None = None) -> None:
    """Process target: serve until told to stop."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    backend = settings.backend
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"backend[worker {index}]: %(levelname)s %(name)s: %(message)s",
    )
    config = uvicorn.Config(
        create_app(settings, worker=index),
        host=backend.host,
        port=backend.base_port + index,
        loop="auto",
        http="auto",
        lifespan="on",
        # Logging is configured above; uvicorn's own chatter only from warnings up, and no
        # access log: the gateway in front writes one.
        log_config=None,
        log_level="warning",
        access_log=False,
        # X-Forwarded-For is interpreted by inputs.client_address, only from the gateway.
        proxy_headers=False,
        server_header=False,
        # uvicorn takes whole seconds here.
        timeout_graceful_shutdown=math.ceil(backend.graceful_timeout),
    )
    server = WorkerServer(config, ready)
    _exit_with_parent(server)
    server.run()
    if not server.started:
        # Start-up failed (port taken, database unusable...): uvicorn has logged why.
        sys.exit(1)
