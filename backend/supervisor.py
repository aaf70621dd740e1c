"""The supervisor: starts ``[backend].workers`` worker processes and keeps them running.

Theory of operation.  One loop owns all state.  It sleeps in ``multiprocessing.connection.wait``
on everything that can happen: each worker's process sentinel (readable the moment the process
dies), each starting worker's ready pipe, and a socket the signal handlers write to (signal
handlers only append to a queue; ``signal.set_wakeup_fd`` wakes the loop).  The timeout is the
nearest deadline (a restart that is due, a SIGKILL after a grace period, a health probe).

A worker moves through these states::

    STARTING --READY on pipe--> PROBING --GET /health ok--> UP
       ^                                                     |
       |  (restart due)                   process died       |  SIGHUP: rolling restart
    WAITING <----------------------------------------------- +-----> STOPPING --exited--> STARTING

* A worker that dies is started again at once; if it keeps dying soon after starting, the delay
  doubles each time up to ``BACKOFF_CAP`` (``restart_delay``) and resets once a worker has
  stayed up ``STABLE_AFTER`` seconds.
* SIGHUP restarts the workers one at a time; the next is stopped only when the previous
  replacement answers ``GET /health``, so all but one worker serve throughout.
* SIGTERM or SIGINT stops every worker with SIGTERM (each finishes its in-flight requests within
  ``graceful_timeout``), SIGKILLs whatever is left after that plus a margin, and exits 0.  A
  second SIGTERM/SIGINT kills the workers at once.
"""

from __future__ import annotations

import collections
import enum
import http.client
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from gateway.config import Settings

from . import migrations
from .signing_key import load_signing_key
from .worker import READY, run_worker

log = logging.getLogger("backend.supervisor")

STABLE_AFTER = 10.0  # seconds up after which a worker's crash count starts over
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
KILL_MARGIN = 5.0  # beyond graceful_timeout, for the lifespan shutdown and interpreter exit
HEALTH_PROBES = 50
HEALTH_PROBE_INTERVAL = 0.1
HEALTH_TIMEOUT = 2.0


def restart_delay(consecutive_crashes: int) -> float:
    """Seconds before restarting a worker that died ``consecutive_crashes`` times in a row
    (counting this one) without staying up ``STABLE_AFTER`` seconds in between."""
    if consecutive_crashes <= 1:
        return 0.0
    return float(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (consecutive_crashes - 2)))


def probe_host(bind_host: str) -> str:
    """Where to reach a server bound to ``bind_host`` (wildcards mean loopback works)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind_host, bind_host)


def probe_health(host: str, port: int, timeout: float = HEALTH_TIMEOUT) -> int | None:
    """The pid a healthy worker reports on GET /health, or None."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        body = json.loads(response.read())
        if response.status == 200 and body.get("status") == "ok":
            return int(body["pid"])
        return None
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
        return None
    finally:
        conn.close()


class State(enum.Enum):
    STARTING = "starting"  # spawned, waiting for READY
    PROBING = "probing"  # listening, waiting for a good GET /health
    UP = "up"
    STOPPING = "stopping"  # sent SIGTERM, waiting for it to exit
    WAITING = "waiting"  # dead, restart scheduled at ``due``
    EXITED = "exited"  # stopped for good (supervisor shutting down)


@dataclass(slots=True)
class Worker:
    index: int
    port: int
    state: State = State.WAITING
    process: BaseProcess | None = None
    ready: Connection | None = None
    started_at: float = 0.0
    crashes: int = 0
    due: float | None = None
    probes: int = 0

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


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


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        backend = settings.backend
        self.host = backend.host
        self.grace = backend.graceful_timeout
        self.workers = [Worker(i, port) for i, port in enumerate(backend.worker_ports())]
        self._context = multiprocessing.get_context("spawn")
        self._signals: collections.deque[int] = collections.deque()
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._stopping = False
        self._stop_deadline: float | None = None
        self._rolling: collections.deque[int] = collections.deque()
        self._rolling_current: int | None = None
        self._all_up = False

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        previous = self._install_signal_handlers()
        try:
            for worker in self.workers:
                self._spawn(worker)
            while not self._finished():
                self._wait()
                self._dispatch_signals()
                now = time.monotonic()
                for worker in self.workers:
                    self._check_exit(worker, now)
                    self._check_ready(worker, now)
                    self._check_timer(worker, now)
                self._check_stop_deadline(now)
            log.info("all workers stopped")
            return 0
        finally:
            self._kill_all()  # only does anything if we got here by an exception
            self._restore_signal_handlers(previous)
            self._wakeup_r.close()
            self._wakeup_w.close()

    def _finished(self) -> bool:
        return self._stopping and all(w.process is None for w in self.workers)

    def _wait(self) -> None:
        waitables: list[Any] = [self._wakeup_r]
        for worker in self.workers:
            if worker.process is not None:
                waitables.append(worker.process.sentinel)
            if worker.ready is not None:
                waitables.append(worker.ready)
        deadlines = [w.due for w in self.workers if w.due is not None]
        if self._stop_deadline is not None:
            deadlines.append(self._stop_deadline)
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        multiprocessing.connection.wait(waitables, timeout)
        try:
            while self._wakeup_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    # --- signals -------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)

        def enqueue(signum: int, frame: FrameType | None) -> None:
            self._signals.append(signum)

        return {
            sig: signal.signal(sig, enqueue)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }

    def _restore_signal_handlers(self, previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(-1)
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _dispatch_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum == signal.SIGHUP:
                self._start_rolling_restart()
            else:
                self._shut_down(signal.Signals(signum).name)

    # --- worker lifecycle ----------------------------------------------------------------

    def _spawn(self, worker: Worker) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_worker,
            args=(self.settings, worker.index, writer),
            name=f"backend-worker-{worker.index}",
        )
        process.start()
        writer.close()  # the child holds the only write end: EOF here if it dies early
        worker.process, worker.ready = process, reader
        worker.state, worker.due, worker.probes = State.STARTING, None, 0
        worker.started_at = time.monotonic()
        log.info("worker %d starting on port %d (pid %d)", worker.index, worker.port, process.pid)

    def _check_exit(self, worker: Worker, now: float) -> None:
        process = worker.process
        if process is None or process.exitcode is None:
            return
        process.join()
        code = process.exitcode
        self._close_ready(worker)
        worker.process = None
        self._all_up = False
        if self._stopping:
            worker.state, worker.due = State.EXITED, None
            log.info(
                "worker %d (pid %d) stopped with exit code %s", worker.index, process.pid, code
            )
        elif worker.state is State.STOPPING:
            log.info("worker %d (pid %d) stopped for restart", worker.index, process.pid)
            self._spawn(worker)
        else:
            uptime = now - worker.started_at
            if uptime >= STABLE_AFTER:
                worker.crashes = 0
            worker.crashes += 1
            delay = restart_delay(worker.crashes)
            log.warning(
                "worker %d (pid %d) died (%s) after %.1fs; restarting in %.1fs",
                worker.index,
                process.pid,
                _describe_exit(code),
                uptime,
                delay,
            )
            worker.state, worker.due = State.WAITING, now + delay
            if self._rolling_current == worker.index:
                self._abort_rolling_restart(f"worker {worker.index} died while restarting")

    def _check_ready(self, worker: Worker, now: float) -> None:
        conn = worker.ready
        if conn is None or not conn.poll():
            return
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = None  # died before it was ready; _check_exit handles the death
        self._close_ready(worker)
        if message == READY and worker.state is State.STARTING:
            log.info(
                "worker %d listening on http://%s (pid %s)",
                worker.index,
                _address(self.host, worker.port),
                worker.pid,
            )
            worker.state, worker.due, worker.probes = State.PROBING, now, 0

    def _check_timer(self, worker: Worker, now: float) -> None:
        if worker.due is None or worker.due > now:
            return
        worker.due = None
        if worker.state is State.WAITING and not self._stopping:
            self._spawn(worker)
        elif worker.state is State.STOPPING and worker.process is not None:
            log.warning(
                "worker %d (pid %d) still running %.1fs after SIGTERM; killing it",
                worker.index,
                worker.pid,
                self.grace + KILL_MARGIN,
            )
            worker.process.kill()
        elif worker.state is State.PROBING:
            self._probe(worker, now)

    def _probe(self, worker: Worker, now: float) -> None:
        pid = probe_health(probe_host(self.host), worker.port)
        if pid is not None and pid == worker.pid:
            self._mark_up(worker)
            return
        worker.probes += 1
        if worker.probes < HEALTH_PROBES:
            worker.due = now + HEALTH_PROBE_INTERVAL
            return
        log.warning(
            "worker %d (pid %s) does not answer GET /health after %d tries",
            worker.index,
            worker.pid,
            worker.probes,
        )
        worker.state = State.UP  # running; the gateway's own health checks take it from here
        if self._rolling_current == worker.index:
            self._abort_rolling_restart(f"worker {worker.index} is not healthy")

    def _mark_up(self, worker: Worker) -> None:
        worker.state = State.UP
        if self._rolling_current == worker.index:
            log.info("worker %d restarted (pid %s)", worker.index, worker.pid)
            self._rolling_current = None
            self._continue_rolling_restart()
        if not self._all_up and all(w.state is State.UP for w in self.workers):
            self._all_up = True
            log.info("all %d workers up", len(self.workers))

    def _close_ready(self, worker: Worker) -> None:
        if worker.ready is not None:
            worker.ready.close()
            worker.ready = None

    def _terminate(self, worker: Worker, deadline: float | None) -> None:
        if worker.process is not None and worker.process.exitcode is None:
            worker.process.terminate()
        worker.state, worker.due = State.STOPPING, deadline

    # --- rolling restart -----------------------------------------------------------------

    def _start_rolling_restart(self) -> None:
        if self._stopping:
            return
        if self._rolling or self._rolling_current is not None:
            log.info("SIGHUP: a rolling restart is already in progress")
            return
        log.info("SIGHUP: restarting %d workers one at a time", len(self.workers))
        self._rolling.extend(w.index for w in self.workers)
        self._continue_rolling_restart()

    def _continue_rolling_restart(self) -> None:
        if not self._rolling:
            log.info("rolling restart complete")
            return
        worker = self.workers[self._rolling.popleft()]
        self._rolling_current = worker.index
        if worker.state is State.WAITING:
            worker.due = time.monotonic()  # dead already: start its replacement now
        elif worker.state in (State.UP, State.PROBING):
            log.info("restarting worker %d (pid %s)", worker.index, worker.pid)
            self._terminate(worker, time.monotonic() + self.grace + KILL_MARGIN)
        # STARTING: it is being replaced already; wait for it to come up.

    def _abort_rolling_restart(self, reason: str) -> None:
        log.error("rolling restart stopped: %s", reason)
        self._rolling.clear()
        self._rolling_current = None

    # --- shutdown ------------------------------------------------------------------------

    def _shut_down(self, reason: str) -> None:
        if self._stopping:
            log.warning("%s again: killing the workers now", reason)
            self._kill_all()
            return
        log.info(
            "%s: stopping %d workers (grace period %.1fs)", reason, len(self.workers), self.grace
        )
        self._stopping = True
        self._rolling.clear()
        self._rolling_current = None
        self._stop_deadline = time.monotonic() + self.grace + KILL_MARGIN
        for worker in self.workers:
            if worker.process is None:
                worker.state, worker.due = State.EXITED, None
            else:
                self._close_ready(worker)
                self._terminate(worker, None)

    def _check_stop_deadline(self, now: float) -> None:
        if self._stop_deadline is not None and now >= self._stop_deadline:
            self._stop_deadline = None
            log.warning("grace period over: killing the remaining workers")
            self._kill_all()

    def _kill_all(self) -> None:
        for worker in self.workers:
            process = worker.process
            if process is not None and process.exitcode is None:
                process.kill()
                process.join(timeout=5)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run(settings: Settings) -> int:
    prepare(settings)
    log.info("supervisor pid %d", os.getpid())
    return Supervisor(settings).run()
