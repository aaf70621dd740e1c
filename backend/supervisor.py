"""``run_backend.py``: prepare the shared state, then run ``[backend].workers`` worker processes
under the shared supervisor (``gateway/runtime/supervisor.py``).

Each worker is a spawned process running ``worker.run_worker`` on ``base_port + index``; it
says READY on a pipe once uvicorn listens, and counts as up once ``GET /health`` answers with
its own pid.  A worker that dies is restarted with back-off, SIGHUP restarts them one at a time
(giving the gateway one health period to see each replacement), SIGTERM/SIGINT stops them
gracefully (``graceful_timeout``).
"""

from __future__ import annotations

import logging
import os

from gateway.config import Settings
from gateway.runtime.children import spawn_target
from gateway.runtime.supervisor import Group, Launched, Supervisor

from . import migrations
from .signing_key import load_signing_key
from .worker import run_worker

log = logging.getLogger("backend.supervisor")


class SupervisorError(Exception):
    """Preparing the shared state failed before any worker could start."""


def prepare(settings: Settings) -> None:
    """Everything the workers share, done once before any starts: the schema migration, the
    JWT secret file and the outbox directory (so workers never race to create them)."""
    backend = settings.backend
    try:
        migrations.migrate(backend.database)
        load_signing_key(backend.state_dir)
        backend.outbox.mkdir(parents=True, exist_ok=True)
    except Exception as exc:
        raise SupervisorError(f"cannot prepare the backend: {exc}") from exc


def worker_group(settings: Settings) -> Group:
    backend = settings.backend

    def launch(index: int) -> Launched:
        return spawn_target(run_worker, (settings, index), f"backend-worker-{index}")

    return Group(
        name="backend",
        label="worker",
        launch=launch,
        ports=list(backend.worker_ports()),
        host=backend.host,
        health_path="/health",
        check_pid=True,  # a GET answered by the worker we just started, not a leftover
        grace=backend.graceful_timeout,
        settle=health_period(settings),
    )


def health_period(settings: Settings) -> float:
    """How long the gateway may take to see a restarted worker UP again: the longest health
    interval (plus timeout) of the pools that hold the backend's workers.  A rolling restart
    waits this long before stopping the next worker, so the pool never runs out of servers."""
    ports = set(settings.backend.worker_ports())
    periods = [
        pool.health_interval + pool.health_timeout
        for pool in settings.upstreams.values()
        if any(server.port in ports for server in pool.servers)
    ]
    return max(periods, default=0.0)


def run(settings: Settings) -> int:
    prepare(settings)
    log.info("supervisor pid %d", os.getpid())
    code = Supervisor([worker_group(settings)], log).run()
    log.info("all workers stopped")
    return code
