"""Running wrk and reading its report: req/s, the p50/p99 latencies of ``--latency``, errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass(frozen=True)
class WrkResult:
    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    requests: int
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0
    non_2xx: int = 0  # wrk counts 4xx and 5xx here ("Non-2xx or 3xx responses")

    @property
    def errors(self) -> int:
        return (
            self.connect_errors
            + self.read_errors
            + self.write_errors
            + self.timeouts
            + self.non_2xx
        )

    def error_text(self) -> str:
        parts = {
            "connect": self.connect_errors,
            "read": self.read_errors,
            "write": self.write_errors,
            "timeout": self.timeouts,
            "non-2xx": self.non_2xx,
        }
        return ", ".join(f"{name} {n}" for name, n in parts.items() if n) or "none"


def parse(output: str) -> WrkResult:
    """Read wrk's text report; ValueError if it has no Requests/sec line (wrk failed)."""
    rps = _RPS.search(output)
    if rps is None:
        raise ValueError("no 'Requests/sec' line in wrk's output")
    percentiles = {
        float(m.group(1)): float(m.group(2)) * _UNITS_MS[m.group(3)]
        for m in _PERCENTILE.finditer(output)
    }
    if 50.0 not in percentiles or 99.0 not in percentiles:
        raise ValueError("no latency distribution in wrk's output (run it with --latency)")
    total = _TOTAL.search(output)
    socket = _SOCKET.search(output)
    connect, read, write, timeout = (int(g) for g in socket.groups()) if socket else (0, 0, 0, 0)
    non_2xx = _NON_2XX.search(output)
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        requests=int(total.group(1)) if total else 0,
        connect_errors=connect,
        read_errors=read,
        write_errors=write,
        timeouts=timeout,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def command(
    wrk: str, url: str, threads: int, connections: int, duration: int, headers: tuple[str, ...] = ()
) -> list[str]:
    extra = [arg for header in headers for arg in ("-H", header)]
    return [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", *extra, url]


def run(
    wrk: str, url: str, threads: int, connections: int, duration: int, headers: tuple[str, ...] = ()
) -> WrkResult:
    """One wrk run; a wrk that hangs past its duration is killed (process group) after 60 s."""
    proc = subprocess.Popen(
        command(wrk, url, threads, connections, duration, headers),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        raise RuntimeError(f"wrk did not finish within {duration + 60}s: {url}") from None
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C) while waiting: never leave wrk behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    try:
        return parse(output)
    except ValueError as exc:
        raise RuntimeError(f"wrk {url}: {exc}:\n{output}") from None
