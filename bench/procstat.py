"""What the benchmark reads from /proc: resident memory, CPU time of process trees, machine load.

Linux only, by design: the bench runs on the loopback of one Linux box, and /proc answers these
questions without a dependency (no psutil).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int | None:
    """VmRSS of ``pid``, or None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (uvicorn workers, nginx workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by ``pids`` (exited ones count as 0)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / CLOCK_TICKS


def machine_ticks() -> tuple[int, int, int]:
    """(busy, interrupt, total) jiffies over all CPUs since boot, from /proc/stat.

    Interrupt time (irq + softirq) is part of busy but charged to no process: on loopback it
    is mostly the kernel's TCP work for both ends of every connection.
    """
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already included in user/nice
    return total - idle, values[5] + values[6], total


class CpuWindow:
    """CPU use over one measurement, in % of one core: per named process tree, for the children
    this process reaped meanwhile (the load generator, which exits inside the window), and for
    interrupts; plus the whole machine's, in % of all cores."""

    def __init__(self, trees: dict[str, list[int]]) -> None:
        self.trees = trees
        self.percent: dict[str, float] = {}
        self.machine_percent = 0.0
        self.interrupt_percent = 0.0
        self.reaped_percent = 0.0
        self._reaped = 0.0
        self._pids: dict[str, list[int]] = {}
        self._cpu: dict[str, float] = {}
        self._machine = (0, 0, 0)
        self._started = 0.0

    def __enter__(self) -> CpuWindow:
        # Trees are listed once, up front: the processes measured do not fork during a run.
        self._pids = {
            name: [pid for root in roots for pid in descendants(root)]
            for name, roots in self.trees.items()
        }
        self._cpu = {name: cpu_seconds(pids) for name, pids in self._pids.items()}
        self._machine = machine_ticks()
        self._reaped = _reaped_cpu()
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self._started, 1e-9)
        self.percent = {
            name: 100 * (cpu_seconds(pids) - self._cpu[name]) / wall
            for name, pids in self._pids.items()
        }
        self.reaped_percent = 100 * (_reaped_cpu() - self._reaped) / wall
        busy, interrupt, total = machine_ticks()
        spent = max(total - self._machine[2], 1)
        self.machine_percent = 100 * (busy - self._machine[0]) / spent
        cores = os.cpu_count() or 1
        self.interrupt_percent = 100 * cores * (interrupt - self._machine[1]) / spent


def _reaped_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_rss_bytes(pid: int) -> int | None:
    """VmRSS summed over ``pid`` and its descendants (the gateway's worker processes)."""
    if rss_bytes(pid) is None:
        return None
    return sum(rss_bytes(p) or 0 for p in descendants(pid))  # descendants includes pid


class RssSampler:
    """Samples the VmRSS of a process tree every ``interval`` seconds on a thread, keeping
    the peak of the sum (with ``[gateway] workers`` the parent only supervises)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = tree_rss_bytes(pid) or 0
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = tree_rss_bytes(self.pid)
            if rss is None:
                return
            self.samples += 1
            self.peak = max(self.peak, rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        rss = tree_rss_bytes(self.pid)
        if rss is not None:
            self.peak = max(self.peak, rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline
