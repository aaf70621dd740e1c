"""The shared supervisor's decisions, driven in-process with fake children (no real processes):
start order (``after_previous``), crash restart, the rolling restart's one-at-a-time order,
and the stop order (the last group started stops first)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable

import pytest

from gateway.runtime.supervisor import Group, Launched, Supervisor


class Timeline:
    """What happened, in order; waiters are woken on every new entry."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.changed = threading.Condition()

    def add(self, event: str) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: predicate(self.events), timeout), self.events


class FakeChild:
    """Exits (its sentinel becomes readable) when told to, or at once on SIGTERM."""

    pids = iter(range(1000, 100000))

    def __init__(self, name: str, timeline: Timeline) -> None:
        self.name = name
        self.timeline = timeline
        self._pid = next(self.pids)
        self._read, self._write = os.pipe()
        self.code: int | None = None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def sentinel(self) -> int:
        return self._read

    def exitcode(self) -> int | None:
        return self.code

    def exit(self, code: int) -> None:
        if self.code is None:
            self.code = code
            os.write(self._write, b"x")

    def send_signal(self, sig: int) -> None:
        self.timeline.add(f"{signal.Signals(sig).name} {self.name}")
        if sig == signal.SIGTERM:
            self.exit(0)

    def kill(self) -> None:
        self.exit(-9)

    def reap(self) -> None:
        os.close(self._read)
        os.close(self._write)

    def tail(self) -> list[str]:
        return []


@pytest.fixture
def timeline() -> Timeline:
    return Timeline()


def group(
    name: str, workers: int, timeline: Timeline, children: dict[str, FakeChild], **kw: object
) -> Group:
    def launch(index: int) -> Launched:
        child = FakeChild(f"{name}{index}", timeline)
        children[child.name] = child
        timeline.add(f"start {child.name}")
        return Launched(child)

    ports: list[int | None] = [None] * workers
    return Group(name=name, label=name, launch=launch, ports=ports, **kw)  # type: ignore[arg-type]


def test_start_crash_roll_and_stop_order(timeline: Timeline) -> None:
    children: dict[str, FakeChild] = {}
    groups = [
        group("backend", 1, timeline, children, on_hup="forward"),
        group("svc", 2, timeline, children, on_hup="roll", after_previous=True),
        group("gw", 1, timeline, children, on_hup="ignore", after_previous=True, grace=1.0),
    ]
    supervisor = Supervisor(groups, logging.getLogger("test.supervisor"))
    supervisor.on_all_up = lambda: timeline.add("all up")

    def drive() -> None:
        timeline.wait_for(lambda e: "all up" in e)
        children["svc1"].exit(3)  # a crash: restarted at once (first crash, no delay)
        timeline.wait_for(lambda e: e.count("start svc1") == 2)
        os.kill(os.getpid(), signal.SIGHUP)
        timeline.wait_for(lambda e: e.count("start svc0") == 2 and e.count("start svc1") == 3)
        os.kill(os.getpid(), signal.SIGTERM)

    driver = threading.Thread(target=drive)
    driver.start()
    try:
        assert supervisor.run() == 0
    finally:
        driver.join(timeout=10)
    events = timeline.events
    # each group starts once the earlier ones are up
    assert events[:5] == ["start backend0", "start svc0", "start svc1", "start gw0", "all up"]
    # SIGHUP: forwarded to the backend, the service rolled one worker at a time, gw left alone
    hup = events[events.index("SIGHUP backend0") :]
    assert hup[:5] == [
        "SIGHUP backend0",
        "SIGTERM svc0",
        "start svc0",
        "SIGTERM svc1",
        "start svc1",
    ]
    # stop: the last group started first, the first one last
    stops = events[events.index("start svc1", events.index("SIGTERM svc1")) + 1 :]
    assert stops == ["SIGTERM gw0", "SIGTERM svc0", "SIGTERM svc1", "SIGTERM backend0"]


def test_a_worker_that_never_comes_up_ends_the_start_up(
    timeline: Timeline, caplog: pytest.LogCaptureFixture
) -> None:
    children: dict[str, FakeChild] = {}
    # A health path on a port nothing listens on: never healthy.
    stuck = group("stuck", 1, timeline, children, start_timeout=0.3, grace=0.5)
    stuck.ports, stuck.health_path = [1], "/health"
    later = group("gw", 1, timeline, children, after_previous=True)
    with caplog.at_level(logging.ERROR, logger="test.supervisor"):
        code = Supervisor([stuck, later], logging.getLogger("test.supervisor")).run()
    assert code == 1
    assert "start gw0" not in timeline.events
    assert timeline.events == ["start stuck0", "SIGTERM stuck0"]
    assert "stuck 0 is not healthy on http://127.0.0.1:1/health" in caplog.text


def test_a_start_up_that_keeps_crashing_is_given_up_after_three_tries(
    timeline: Timeline, caplog: pytest.LogCaptureFixture
) -> None:
    children: dict[str, FakeChild] = {}
    crashing = group("crashy", 1, timeline, children, start_timeout=60.0)
    launch = crashing.launch

    def launch_and_crash(index: int) -> Launched:
        launched = launch(index)
        assert isinstance(launched.child, FakeChild)
        # It would say "ready" on the pipe; it exits first (e.g. its port is taken).
        ready, writer = multiprocessing.Pipe(duplex=False)
        writer.close()
        launched.child.exit(1)
        return Launched(launched.child, ready)

    crashing.launch = launch_and_crash
    with caplog.at_level(logging.WARNING, logger="test.supervisor"):
        code = Supervisor([crashing], logging.getLogger("test.supervisor")).run()
    assert code == 1
    assert timeline.events == ["start crashy0"] * 3  # 0 s, then 0.5 s of back-off, then given up
    assert "restarting in 0.5s" in caplog.text
    assert "crashy 0 exited 3 times while starting" in caplog.text
