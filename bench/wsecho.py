#!/usr/bin/env python3
"""WebSocket echo round trips per second: the load generator of the websocket scenario.

wrk speaks no WebSocket, so this plays its part: ``run`` starts ``threads`` client processes
(this file with ``--child``), each holding its share of ``connections`` upgraded connections;
every connection keeps one small text message in flight, sends the next as soon as the echo
is back, and records the round trip's latency.  The clock starts once every connection has
been upgraded, so handshakes are not counted.  The result is a ``wrk.WrkResult`` (requests =
round trips), so the tables and the summary show it like any other scenario.

The client is as thin as the protocol allows (one pre-masked frame sent again and again, the
echo recognised by its length), so on 2 shared cores the CPU goes to the servers measured,
not to decoding frames in Python.  The clients are reaped children: their CPU shows in the
"wrk CPU" column.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import wrk

PAYLOAD = b"x" * 64  # one small text message, as chat or game traffic
MASK = b"\x11\x22\x33\x44"  # fixed: the bench sends one frame again and again
FRAME = (
    bytes([0x81, 0x80 | len(PAYLOAD)])
    + MASK
    + bytes(b ^ MASK[i % 4] for i, b in enumerate(PAYLOAD))
)
ECHO = bytes([0x81, len(PAYLOAD)]) + PAYLOAD  # the server's unmasked echo
CLOSE = bytes([0x88, 0x82]) + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(b"\x03\xe8"))
HANDSHAKE_TIMEOUT = 20.0


class EchoClient(asyncio.Protocol):
    """One connection: upgrade, then one message in flight until ``stop``."""

    def __init__(self, request: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.running = False
        self.sent_at = 0.0
        self.latencies: list[float] = []
        self.read_error = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            del buffer[: end + 4]
            if not status.startswith(b"HTTP/1.1 101 "):
                self.upgraded.set_exception(RuntimeError(status.decode("latin-1")))
                return
            self.upgraded.set_result(None)
        while len(buffer) >= len(ECHO):
            if buffer[: len(ECHO)] != ECHO:
                self.read_error = True
                self.stop()
                return
            del buffer[: len(ECHO)]
            now = time.perf_counter()
            self.latencies.append(now - self.sent_at)
            if self.running:
                self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("closed before the upgrade"))
        elif self.running:
            self.read_error = True
        self.running = False

    def send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(FRAME)

    def start(self) -> None:
        self.running = True
        self.send()

    def stop(self) -> None:
        self.running = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(CLOSE)
            self.transport.close()


async def child(
    url: str, ca_file: str | None, connections: int, duration: float
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    context = ssl.create_default_context(cafile=ca_file) if secure else None
    port = parts.port or (443 if secure else 80)
    path = parts.path or "/"
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()

    async def open_one() -> EchoClient:
        _, client = await loop.create_connection(
            lambda: EchoClient(request, loop),
            parts.hostname,
            port,
            ssl=context,
            server_hostname="localhost" if secure else None,
        )
        await client.upgraded
        return client

    results = await asyncio.wait_for(
        asyncio.gather(*(open_one() for _ in range(connections)), return_exceptions=True),
        HANDSHAKE_TIMEOUT,
    )
    clients = [c for c in results if isinstance(c, EchoClient)]
    failed = [repr(c) for c in results if not isinstance(c, EchoClient)]
    for client in clients:
        client.start()
    await asyncio.sleep(duration)
    for client in clients:
        client.running = False
    # Round trips in flight at the deadline are not counted.
    counted = [c.latencies[:] for c in clients]
    for client in clients:
        client.stop()
    await asyncio.sleep(0.1)  # let the close frames and TLS close_notify go out
    return {
        "round_trips": sum(len(lat) for lat in counted),
        "latencies_ms": [round(x * 1000, 3) for lat in counted for x in lat],
        "connect_errors": len(failed),
        "read_errors": sum(c.read_error for c in clients),
        "problems": failed[:3],
    }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(
    url: str, ca_file: str | None, threads: int, connections: int, duration: int
) -> wrk.WrkResult:
    """``connections`` echo loops spread over ``threads`` client processes for ``duration``
    seconds; a client that hangs past it is killed after 60 s more."""
    shares = [connections // threads + (i < connections % threads) for i in range(threads)]
    procs: list[tuple[subprocess.Popen[str], Path]] = []
    reports = []
    # Each client writes its report (every latency) to a file: far more than a pipe holds.
    with tempfile.TemporaryDirectory(prefix="wsecho-") as tmp:
        try:
            for i, share in enumerate(shares):
                report = Path(tmp) / f"client{i}.json"
                argv = [sys.executable, __file__, "--child", url, str(share), str(duration)]
                argv += ["--report", str(report)] + (["--ca-file", ca_file] if ca_file else [])
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
                procs.append((popen, report))
            for popen, report in procs:
                output, _ = popen.communicate(timeout=duration + 60)
                try:
                    reports.append(json.loads(report.read_text()))
                except (OSError, ValueError):
                    raise RuntimeError(f"wsecho {url}: no report:\n{output[-2000:]}") from None
        finally:
            for popen, _ in procs:
                if popen.poll() is None:
                    os.killpg(popen.pid, signal.SIGKILL)
                    popen.wait(timeout=10)
    latencies = [x for r in reports for x in r["latencies_ms"]]
    count = sum(r["round_trips"] for r in reports)
    connect_errors = sum(r["connect_errors"] for r in reports)
    if connect_errors == connections:
        problems = [p for r in reports for p in r["problems"]]
        raise RuntimeError(f"wsecho {url}: no connection was upgraded: {problems}")
    return wrk.WrkResult(
        requests_per_sec=count / duration,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        requests=count,
        connect_errors=connect_errors,
        read_errors=sum(r["read_errors"] for r in reports),
    )


def probe(url: str, ca_file: str | None) -> str | None:
    """One upgrade and a few echoes; None when that worked, else what went wrong."""
    try:
        report = _run_child(url, ca_file, 1, 0.2)
    except (OSError, RuntimeError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if report["connect_errors"] or not report["round_trips"]:
        return f"no echo: {report['problems']}"
    return None


def _run_child(url: str, ca_file: str | None, connections: int, duration: float) -> dict:  # type: ignore[type-arg]
    try:
        import uvloop

        return uvloop.run(child(url, ca_file, connections, duration))
    except ImportError:  # pragma: no cover - uvloop not installed
        return asyncio.run(child(url, ca_file, connections, duration))


def main() -> None:
    parser = argparse.ArgumentParser(description="WebSocket echo load (one client process)")
    parser.add_argument("--child", nargs=3, metavar=("URL", "CONNECTIONS", "SECONDS"))
    parser.add_argument("--ca-file")
    parser.add_argument("--report", help="write the JSON report here (default: stdout)")
    args = parser.parse_args()
    if not args.child:
        parser.error("run by bench/run.py (or give --child URL CONNECTIONS SECONDS)")
    url, connections, seconds = args.child
    report = json.dumps(_run_child(url, args.ca_file, int(connections), float(seconds)))
    if args.report:
        Path(args.report).write_text(report)
    else:
        print(report)


if __name__ == "__main__":
    main()
