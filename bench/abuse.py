"""Abuse scenarios (issue 13), each run against the gateway and nginx in turn:

- slowloris: N TLS connections send a partial request head and then one header line every
  ``drip`` seconds, while a normal client keeps requesting; reported: how many slow sockets the
  proxy closed within the window (and when), and the normal client's latency and errors.
- idle memory: N TLS connections each make one request and then stay open (keep-alive); the
  proxy's process-tree RSS before and after.
- soak: wrk load for ``seconds`` while the proxy's RSS is sampled every second; flat means the
  last fifth of the run is no higher than the second fifth (after warm-up).

The clients are asyncio streams (no dependency beyond httpx); nothing here needs root.
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

import wrk
from procstat import tree_rss_bytes

MIB = 1024 * 1024


@dataclass
class SlowlorisResult:
    target: str
    sockets: int
    seconds: float
    opened: int = 0
    closed: int = 0
    closed_after: list[float] = field(default_factory=list)
    probe_ms: list[float] = field(default_factory=list)
    probe_errors: int = 0

    def text(self) -> str:
        when = (
            f", median {statistics.median(self.closed_after):.1f} s after opening"
            if self.closed_after
            else ""
        )
        probes = sorted(self.probe_ms)
        p50 = probes[len(probes) // 2] if probes else float("nan")
        p99 = probes[min(len(probes) - 1, int(len(probes) * 0.99))] if probes else float("nan")
        return (
            f"{self.target}: closed {self.closed}/{self.opened} slow sockets within "
            f"{self.seconds:.0f} s{when}; normal client p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
            f"{len(probes)} ok, {self.probe_errors} errors"
        )


def client_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


async def _slowloris(
    target: str, port: int, ca_file: Path, path: str, sockets: int, drip: float, seconds: float
) -> SlowlorisResult:
    result = SlowlorisResult(target, sockets, seconds)
    context = client_context(ca_file)
    started = time.monotonic()
    deadline = started + seconds
    writers: list[asyncio.StreamWriter] = []
    watchers: list[asyncio.Task[None]] = []

    async def watch(reader: asyncio.StreamReader, opened: float) -> None:
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, ssl.SSLError):
            pass
        result.closed += 1
        result.closed_after.append(time.monotonic() - opened)

    for _ in range(sockets):
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost"
            )
        except (OSError, ssl.SSLError):
            continue
        writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n".encode())
        writers.append(writer)
        watchers.append(asyncio.create_task(watch(reader, time.monotonic())))
    result.opened = len(writers)

    async def drip_lines() -> None:
        line = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(min(drip, max(deadline - time.monotonic(), 0)))
            line += 1
            for writer in writers:
                if not writer.is_closing():
                    try:
                        writer.write(b"X-Drip-%d: x\r\n" % line)
                    except (ConnectionError, RuntimeError):
                        pass

    async def probe() -> None:
        async with httpx.AsyncClient(verify=context, timeout=10.0) as client:
            while time.monotonic() < deadline:
                sent = time.perf_counter()
                try:
                    response = await client.get(f"https://localhost:{port}{path}")
                    if response.status_code < 400:
                        result.probe_ms.append((time.perf_counter() - sent) * 1000)
                    else:
                        result.probe_errors += 1
                except httpx.HTTPError:
                    result.probe_errors += 1
                await asyncio.sleep(0.2)

    await asyncio.gather(drip_lines(), probe())
    for writer in writers:
        writer.close()
    for task in watchers:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    # Sockets we closed ourselves at the end do not count: only those before the deadline.
    inside = [t for t in result.closed_after if t <= seconds]
    result.closed, result.closed_after = len(inside), inside
    return result


def slowloris(
    target: str, port: int, ca_file: Path, path: str, sockets: int, drip: float, seconds: float
) -> SlowlorisResult:
    return asyncio.run(_slowloris(target, port, ca_file, path, sockets, drip, seconds))


@dataclass
class IdleResult:
    target: str
    opened: int
    before: int
    after: int

    def text(self) -> str:
        per = (self.after - self.before) / max(self.opened, 1) / 1024
        return (
            f"{self.target}: {self.opened} idle TLS connections, RSS {self.before / MIB:.0f} -> "
            f"{self.after / MIB:.0f} MiB ({per:.1f} KiB each)"
        )


async def _idle_memory(
    target: str, port: int, ca_file: Path, path: str, pid: int, count: int
) -> IdleResult:
    context = client_context(ca_file)
    before = tree_rss_bytes(pid) or 0
    writers: list[asyncio.StreamWriter] = []
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    for _ in range(count):
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost"
            )
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")  # the head is enough: the connection stays
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            continue
        writers.append(writer)
    await asyncio.sleep(1.0)
    after = tree_rss_bytes(pid) or 0
    for writer in writers:
        writer.close()
    return IdleResult(target, len(writers), before, after)


def idle_memory(
    target: str, port: int, ca_file: Path, path: str, pid: int, count: int
) -> IdleResult:
    return asyncio.run(_idle_memory(target, port, ca_file, path, pid, count))


@dataclass
class SoakResult:
    target: str
    seconds: int
    samples: list[int]
    rps: float
    errors: int

    @property
    def flat(self) -> bool:
        """The last fifth of the run is within 5% (or 4 MiB) of the second fifth."""
        fifth = max(len(self.samples) // 5, 1)
        early = max(self.samples[fifth : 2 * fifth] or self.samples[:1])
        late = max(self.samples[-fifth:])
        return late <= max(early * 1.05, early + 4 * MIB)

    def text(self) -> str:
        s = self.samples
        return (
            f"{self.target}: {self.seconds} s of load at {self.rps:.0f} r/s ({self.errors} "
            f"errors), RSS start {s[0] / MIB:.0f}, peak {max(s) / MIB:.0f}, end "
            f"{s[-1] / MIB:.0f} MiB: {'flat' if self.flat else 'GROWING'}"
        )


def soak(
    target: str, wrk_path: str, url: str, pid: int, seconds: int, threads: int, connections: int
) -> SoakResult:
    samples: list[int] = []
    result: list[wrk.WrkResult] = []

    async def run() -> None:
        load = asyncio.create_task(
            asyncio.to_thread(
                lambda: result.append(wrk.run(wrk_path, url, threads, connections, seconds))
            )
        )
        while not load.done():
            rss = tree_rss_bytes(pid)
            if rss is not None:
                samples.append(rss)
            await asyncio.wait({load}, timeout=1.0)
        await load

    asyncio.run(run())
    outcome = result[0]
    return SoakResult(target, seconds, samples or [0], outcome.requests_per_sec, outcome.errors)
