"""One supervisor for every kind of worker process: backend workers, gateway workers, services.

Theory of operation (uvicorn's ``Multiprocess``, generalised).  A ``Group`` is N workers of one
kind that are started the same way (``launch(index)``) and checked the same way; the caller binds
what must be bound before (the gateway's listeners) and hands it over in ``launch``.  One loop
owns all state.  It sleeps in ``multiprocessing.connection.wait`` on everything that can
happen: each worker's exit sentinel, each starting worker's ready pipe, and a socket the signal
handlers write to (handlers only append to a queue; ``signal.set_wakeup_fd`` wakes the loop).
The timeout is the nearest deadline: a restart that is due, a health probe, a SIGKILL after a
grace period, a start-up that takes too long.

A worker moves through these states::

    STARTING --ready pipe / started--> PROBING --GET health_path ok--> UP
       ^                                                               |
       | restart due                                 died / SIGHUP     |
    WAITING <------------- died ------------------------------------- +--> STOPPING --exited--+
       STARTING <-----------------------------------------------------------------------------+

* A worker that dies is started again at once; if it keeps dying soon after starting, the delay
  doubles each time up to ``BACKOFF_CAP`` and resets once it has stayed up ``STABLE_AFTER``.
* A worker that is not healthy within its group's ``start_timeout`` (or that crashed
  ``START_CRASHES`` times in a row while starting) is reported by name with the last lines of
  its output.  While the supervisor is still starting up that ends the run (exit
  1): a stack that cannot come up should say why and stop, not limp.
* A group whose ``after_previous`` is set starts once every earlier group is UP (the gateway
  after the services it forwards to).
* SIGHUP restarts the workers of the ``on_hup="roll"`` groups one at a time, the next one only
  when the previous replacement is healthy, so all but one worker serve throughout;
  ``on_hup="forward"`` groups get the SIGHUP themselves (a nested supervisor, the gateway).
* SIGTERM or SIGINT stops the groups in reverse order (the gateway first), each gracefully:
  SIGTERM, then SIGKILL after its ``grace`` plus a margin.  A second signal kills all at once.
"""

from __future__ import annotations

import collections
import enum
import http.client
import json
import logging
import multiprocessing.connection
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any, Literal, Protocol

STABLE_AFTER = 10.0  # seconds up after which a worker's crash count starts over
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
KILL_MARGIN = 5.0  # beyond a group's grace, for lifespan shutdown and interpreter exit
PROBE_INTERVAL = 0.1
PROBE_TIMEOUT = 2.0
TAIL_LINES = 20
START_CRASHES = 3  # crashes in a row while starting up after which the start-up is given up


def restart_delay(consecutive_crashes: int) -> float:
    """Seconds before restarting a worker that died ``consecutive_crashes`` times in a row
    (counting this one) without staying up ``STABLE_AFTER`` seconds in between."""
    if consecutive_crashes <= 1:
        return 0.0
    return float(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (consecutive_crashes - 2)))


def probe_host(bind_host: str) -> str:
    """Where to reach a server bound to ``bind_host`` (wildcards mean loopback works)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind_host, bind_host)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe_health(host: str, port: int, path: str, timeout: float = PROBE_TIMEOUT) -> int | None:
    """GET ``path``: None unless 2xx; else the ``pid`` the body reports (0 if none)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if not 200 <= response.status < 300:
            return None
        try:
            return int(json.loads(body).get("pid", 0))
        except (ValueError, AttributeError, TypeError):
            return 0
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Child(Protocol):
    """A started worker process, whatever started it (see ``children.py``)."""

    @property
    def pid(self) -> int: ...
    @property
    def sentinel(self) -> int:
        """A file descriptor that becomes readable when the process exits."""
        ...

    def exitcode(self) -> int | None: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...
    def reap(self) -> None:
        """Release what is left once it has exited (join, close descriptors)."""
        ...

    def tail(self) -> list[str]:
        """Its last output lines, for reports (empty when its output is not ours)."""
        ...


@dataclass(frozen=True, slots=True)
class Launched:
    child: Child
    # The child sends one message on it when it is serving; None: serving once started.
    ready: Connection | None = None


@dataclass
class Group:
    name: str
    label: str  # how log lines name a worker: f"{label} {index}"
    launch: Callable[[int], Launched]
    ports: Sequence[int | None]  # one per worker; None: nothing to probe
    host: str = "127.0.0.1"
    health_path: str | None = None  # probed after start when the worker has a port
    check_pid: bool = False  # the health answer must report the worker's own pid
    start_timeout: float = 30.0
    grace: float = 10.0
    on_hup: Literal["roll", "forward", "ignore"] = "roll"
    after_previous: bool = False
    numbered: bool = True  # False: a one-process group is named by its label alone
    # Rolling restart: seconds to wait after a replacement is healthy before stopping the next
    # worker, so a load balancer's own health checks (interval + timeout) have seen it too.
    settle: float = 0.0


class State(enum.Enum):
    PENDING = "pending"  # not started yet (its group waits for the earlier ones)
    STARTING = "starting"  # spawned, waiting for the ready pipe
    PROBING = "probing"  # serving, waiting for a good health answer
    UP = "up"
    STOPPING = "stopping"  # sent SIGTERM, waiting for it to exit
    WAITING = "waiting"  # dead, restart scheduled at ``due``
    EXITED = "exited"  # stopped for good


@dataclass(eq=False)
class Worker:
    group: Group
    index: int
    port: int | None
    state: State = State.PENDING
    child: Child | None = None
    ready: Connection | None = None
    started_at: float = 0.0
    crashes: int = 0
    due: float | None = None  # restart, next probe, or SIGKILL
    start_deadline: float | None = None
    last_tail: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.group.label} {self.index}" if self.group.numbered else self.group.label

    @property
    def pid(self) -> int | None:
        return None if self.child is None else self.child.pid


class Supervisor:
    def __init__(self, groups: Sequence[Group], log: logging.Logger) -> None:
        self.groups = list(groups)
        self.log = log
        self.workers = [
            Worker(group, i, port) for group in self.groups for i, port in enumerate(group.ports)
        ]
        self._signals: collections.deque[int] = collections.deque()
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._stopping = False
        self._exit_code = 0
        self._starting_up = True
        self._stop_order: list[Group] = []
        self._stop_deadline: float | None = None
        self._rolling: collections.deque[Worker] = collections.deque()
        self._rolling_current: Worker | None = None
        self._rolling_due: float | None = None
        self._all_up = False
        # Called once when every worker of every group is first UP (e.g. "gateway ready").
        self.on_all_up: Callable[[], None] | None = None
        # Called on SIGHUP besides what the groups' on_hup say (the gateway's reload).
        self.on_hup: Callable[[], None] | None = None

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        previous = self._install_signal_handlers()
        try:
            self._start_ready_groups(time.monotonic())
            while not self._finished():
                self._wait()
                self._dispatch_signals()
                now = time.monotonic()
                for worker in self.workers:
                    self._check_exit(worker, now)
                    self._check_ready(worker, now)
                    self._check_timer(worker, now)
                self._start_ready_groups(now)
                self._check_rolling(now)
                self._check_stop(now)
            return self._exit_code
        finally:
            self._kill_all()  # only does anything if we got here by an exception
            self._restore_signal_handlers(previous)
            self._wakeup_r.close()
            self._wakeup_w.close()

    def _finished(self) -> bool:
        return self._stopping and all(w.child is None for w in self.workers)

    def _wait(self) -> None:
        waitables: list[Any] = [self._wakeup_r]
        deadlines: list[float] = []
        for worker in self.workers:
            if worker.child is not None:
                waitables.append(worker.child.sentinel)
            if worker.ready is not None:
                waitables.append(worker.ready)
            deadlines += [d for d in (worker.due, worker.start_deadline) if d is not None]
        for deadline in (self._stop_deadline, self._rolling_due):
            if deadline is not None:
                deadlines.append(deadline)
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
                self._on_hup()
            else:
                self.shut_down(signal.Signals(signum).name)

    # --- worker lifecycle ----------------------------------------------------------------

    def _start_ready_groups(self, now: float) -> None:
        if self._stopping:
            return
        for position, group in enumerate(self.groups):
            members = [w for w in self.workers if w.group is group]
            if not any(w.state is State.PENDING for w in members):
                continue
            earlier = [w for w in self.workers if self.groups.index(w.group) < position]
            if group.after_previous and not all(w.state is State.UP for w in earlier):
                return  # and every later group waits too
            for worker in members:
                self._spawn(worker, now)

    def _spawn(self, worker: Worker, now: float) -> None:
        group = worker.group
        if worker.start_deadline is None:  # kept across a crash loop: it must end some time
            worker.start_deadline = now + group.start_timeout
        try:
            launched = group.launch(worker.index)
        except OSError as exc:  # e.g. the command does not exist: a crash like any other
            worker.crashes += 1
            worker.last_tail = [f"cannot start: {exc}"]
            delay = max(restart_delay(worker.crashes), BACKOFF_BASE)
            self.log.error("%s cannot start: %s; trying again in %.1fs", worker.name, exc, delay)
            worker.state, worker.due = State.WAITING, now + delay
            return
        worker.child, worker.ready = launched.child, launched.ready
        worker.state = State.STARTING
        worker.due, worker.started_at = None, now
        where = f" on port {worker.port}" if worker.port is not None else ""
        self.log.info("%s starting%s (pid %d)", worker.name, where, launched.child.pid)
        if launched.ready is None:
            self._serving(worker, now)

    def _serving(self, worker: Worker, now: float) -> None:
        group = worker.group
        if worker.port is not None and group.health_path is not None:
            worker.state, worker.due = State.PROBING, now
        else:
            self._mark_up(worker)

    def _check_exit(self, worker: Worker, now: float) -> None:
        child = worker.child
        if child is None or child.exitcode() is None:
            return
        child.reap()
        code = child.exitcode()
        worker.last_tail = child.tail()
        self._close_ready(worker)
        worker.child = None
        self._all_up = False
        if self._stopping:
            worker.state, worker.due, worker.start_deadline = State.EXITED, None, None
            self.log.info("%s (pid %d) stopped (%s)", worker.name, child.pid, describe_exit(code))
        elif worker.state is State.STOPPING:
            self.log.info("%s (pid %d) stopped for restart", worker.name, child.pid)
            self._spawn(worker, now)
        else:
            uptime = now - worker.started_at
            if uptime >= STABLE_AFTER:
                worker.crashes = 0
            worker.crashes += 1
            delay = restart_delay(worker.crashes)
            self.log.warning(
                "%s (pid %d) died (%s) after %.1fs; restarting in %.1fs",
                worker.name,
                child.pid,
                describe_exit(code),
                uptime,
                delay,
            )
            worker.state, worker.due = State.WAITING, now + delay
            if self._rolling_current is worker:
                self._abort_rolling_restart(f"{worker.name} died while restarting")
            if self._starting_up and worker.crashes >= START_CRASHES:
                # A start-up that fails the same way three times (a busy port, a bad setting)
                # will not heal by waiting for start_timeout: say so now.
                self._not_healthy(worker, f"exited {worker.crashes} times while starting")

    def _check_ready(self, worker: Worker, now: float) -> None:
        conn = worker.ready
        if conn is None or not conn.poll():
            return
        try:
            conn.recv()
            message_ok = True
        except (EOFError, OSError):
            message_ok = False  # died before it was ready; _check_exit handles the death
        self._close_ready(worker)
        if message_ok and worker.state is State.STARTING:
            if worker.port is not None:
                self.log.info(
                    "%s listening on http://%s (pid %s)",
                    worker.name,
                    address(worker.group.host, worker.port),
                    worker.pid,
                )
            self._serving(worker, now)

    def _check_timer(self, worker: Worker, now: float) -> None:
        deadline = worker.start_deadline
        late = deadline is not None and deadline <= now and worker.state is not State.UP
        if late and not self._stopping:
            worker.start_deadline = None
            self._not_healthy(worker)
        if worker.due is None or worker.due > now:
            return
        worker.due = None
        if worker.state is State.WAITING and not self._stopping:
            self._spawn(worker, now)
        elif worker.state is State.STOPPING and worker.child is not None:
            self.log.warning(
                "%s (pid %d) still running %.1fs after SIGTERM; killing it",
                worker.name,
                worker.child.pid,
                worker.group.grace + KILL_MARGIN,
            )
            worker.child.kill()
        elif worker.state is State.PROBING:
            self._probe(worker, now)

    def _probe(self, worker: Worker, now: float) -> None:
        group = worker.group
        assert worker.port is not None and group.health_path is not None
        pid = probe_health(probe_host(group.host), worker.port, group.health_path)
        if pid is not None and (not group.check_pid or pid == worker.pid):
            self._mark_up(worker)
        else:
            worker.due = now + PROBE_INTERVAL

    def _not_healthy(self, worker: Worker, why: str | None = None) -> None:
        group = worker.group
        if why is None:
            where = ""
            if worker.port is not None and group.health_path is not None:
                where = f" on http://{address(group.host, worker.port)}{group.health_path}"
            why = f"is not healthy{where} {group.start_timeout:.0f}s after it was started"
        tail = worker.child.tail() if worker.child is not None else worker.last_tail
        shown = "\n".join(f"    {line}" for line in tail[-TAIL_LINES:]) or "    (no output)"
        self.log.error("%s %s; its last output:\n%s", worker.name, why, shown)
        if self._starting_up:
            self._exit_code = 1
            self.shut_down(f"{group.name} did not start")
        elif self._rolling_current is worker:
            self._abort_rolling_restart(f"{worker.name} is not healthy")

    def _mark_up(self, worker: Worker) -> None:
        worker.state, worker.start_deadline = State.UP, None
        if self._rolling_current is worker:
            self.log.info("%s restarted (pid %s)", worker.name, worker.pid)
            self._rolling_current = None
            self._rolling_due = time.monotonic() + worker.group.settle
        if not self._all_up and all(w.state is State.UP for w in self.workers):
            self._all_up = True
            self.log.info("all %d workers up", len(self.workers))
            if self._starting_up:
                self._starting_up = False
                if self.on_all_up is not None:
                    self.on_all_up()

    def _close_ready(self, worker: Worker) -> None:
        if worker.ready is not None:
            worker.ready.close()
            worker.ready = None

    def _terminate(self, worker: Worker, deadline: float | None) -> None:
        if worker.child is not None and worker.child.exitcode() is None:
            worker.child.send_signal(signal.SIGTERM)
        worker.state, worker.due, worker.start_deadline = State.STOPPING, deadline, None

    # --- SIGHUP --------------------------------------------------------------------------

    def _on_hup(self) -> None:
        if self._stopping:
            return
        if self.on_hup is not None:
            self.on_hup()
        for worker in self.workers:
            if worker.group.on_hup == "forward" and worker.child is not None:
                self.log.info("SIGHUP: passed on to %s (pid %d)", worker.name, worker.child.pid)
                worker.child.send_signal(signal.SIGHUP)
        rolling = [w for w in self.workers if w.group.on_hup == "roll"]
        if not rolling:
            return
        if self._rolling or self._rolling_current is not None or self._rolling_due is not None:
            self.log.info("SIGHUP: a rolling restart is already in progress")
            return
        self.log.info("SIGHUP: restarting %d workers one at a time", len(rolling))
        self._rolling.extend(rolling)
        self._continue_rolling_restart()

    def _check_rolling(self, now: float) -> None:
        if self._rolling_due is not None and self._rolling_due <= now:
            self._rolling_due = None
            self._continue_rolling_restart()

    def _continue_rolling_restart(self) -> None:
        if not self._rolling:
            self.log.info("rolling restart complete")
            return
        worker = self._rolling.popleft()
        self._rolling_current = worker
        if worker.state is State.WAITING:
            worker.due = time.monotonic()  # dead already: start its replacement now
        elif worker.state in (State.UP, State.PROBING):
            self.log.info("restarting %s (pid %s)", worker.name, worker.pid)
            self._terminate(worker, time.monotonic() + worker.group.grace + KILL_MARGIN)
        # STARTING: it is being replaced already; wait for it to come up.

    def _abort_rolling_restart(self, reason: str) -> None:
        self.log.error("rolling restart stopped: %s", reason)
        self._rolling.clear()
        self._rolling_current = self._rolling_due = None

    # --- shutdown ------------------------------------------------------------------------

    def shut_down(self, reason: str) -> None:
        """Stop every group, the last started first; a second call kills what is left."""
        if self._stopping:
            self.log.warning("%s again: killing every worker now", reason)
            self._kill_all()
            return
        running = sum(w.child is not None for w in self.workers)
        self.log.info("%s: stopping %d workers", reason, running)
        self._stopping = True
        self._rolling.clear()
        self._rolling_current = self._rolling_due = None
        for worker in self.workers:
            self._close_ready(worker)
            if worker.child is None:
                worker.state, worker.due, worker.start_deadline = State.EXITED, None, None
        self._stop_order = [g for g in reversed(self.groups)]
        self._stop_next_group(time.monotonic())

    def _stop_next_group(self, now: float) -> None:
        while self._stop_order:
            group = self._stop_order[0]
            running = [w for w in self.workers if w.group is group and w.child is not None]
            if not running:
                self._stop_order.pop(0)
                continue
            if self._stop_deadline is None:  # first visit: signal them
                for worker in running:
                    self._terminate(worker, None)
                self._stop_deadline = now + group.grace + KILL_MARGIN
            return

    def _check_stop(self, now: float) -> None:
        if not self._stopping or not self._stop_order:
            return
        group = self._stop_order[0]
        running = [w for w in self.workers if w.group is group and w.child is not None]
        if running and self._stop_deadline is not None and now >= self._stop_deadline:
            self.log.warning("%s: grace period over, killing %d workers", group.name, len(running))
            for worker in running:
                assert worker.child is not None
                worker.child.kill()
            self._stop_deadline = now + KILL_MARGIN  # SIGKILL cannot be refused; just reap
            return
        if not running:
            self._stop_order.pop(0)
            self._stop_deadline = None
            self._stop_next_group(now)

    def _kill_all(self) -> None:
        for worker in self.workers:
            child = worker.child
            if child is not None and child.exitcode() is None:
                child.kill()
