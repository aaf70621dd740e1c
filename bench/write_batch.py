#!/usr/bin/env python3
"""What writing replies once per event-loop iteration saves: one server, two ways of writing.

    .venv/bin/python bench/write_batch.py [--busy 0 12 40 100] [--rounds 2] [--duration 5]

A minimal HTTP/1.1 server on this stack (uvloop's TLS transport, httptools' parser) answers
every request with the same small JSON reply after ``--busy`` microseconds of work, standing in
for the interpreter's work per request.  It runs twice per busy value, alternating:

- ``at once``: each reply is written from the parser callback that completes its request, as
  uvicorn (and the gateway before session 6) does;
- ``batched``: each reply goes through ``gateway.corking.CorkedTransport``, which holds it
  until the loop has handled every I/O event of its poll and then writes the held replies back
  to back (``WriteBatch``).

``wrk -t2 -c32`` loads it for ``--duration`` seconds after a 1 s warm-up; printed are req/s,
p50/p99 and the server's CPU per request (utime + stime from /proc over the run, divided by
the requests).  The difference is the kernel's: a ``send()`` on loopback delivers to the peer
and wakes it out of ``epoll_wait``; replies written one per callback, with the next request's
work in between, wake wrk for nearly every one, while a burst wakes it about once.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import wrk
from procstat import cpu_seconds
from stack import Process, find_tool, wait_port

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"status":"ok","service":"origin"}'
REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
MODES = ("at once", "batched")
Result = tuple[float, float, float, float]  # req/s, p50 ms, p99 ms, CPU µs per request


def serve(port: int, cert: str, key: str, busy_us: float, batched: bool) -> None:
    import httptools
    import uvloop

    sys.path.insert(0, str(ROOT))
    from gateway.corking import CorkedTransport

    busy = busy_us / 1e6

    class Server(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.out = CorkedTransport(transport, asyncio.get_running_loop()) if batched else None
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            end = time.perf_counter() + busy
            while time.perf_counter() < end:
                pass
            (self.out or self.transport).write(REPLY)

    async def listen() -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Server, "127.0.0.1", port, ssl=context, backlog=1024)
        await server.serve_forever()

    uvloop.run(listen())


def self_signed(directory: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(binary: str, tmp: Path, busy: float, mode: str, duration: int) -> Result:
    """One server run under wrk."""
    port = free_port()
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    argv = [sys.executable, __file__, "--serve", str(port), str(cert), str(key), str(busy)]
    argv += ["--batched"] if mode == "batched" else []
    server = Process(mode, argv, tmp / "server.log")
    server.start()
    try:
        wait_port(server, port)
        url = f"https://127.0.0.1:{port}/"
        wrk.run(binary, url, 2, 32, 1)
        before = cpu_seconds([server.pid])
        result = wrk.run(binary, url, 2, 32, duration)
        used = cpu_seconds([server.pid]) - before
    finally:
        server.stop(grace=5.0)
    if result.errors or not result.requests:
        raise SystemExit(f"{mode}: wrk errors {result.error_text()}")
    cpu = used / result.requests * 1e6
    return result.requests_per_sec, result.p50_ms, result.p99_ms, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=float, nargs="+", default=[0, 12, 40, 100])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--batched", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        port, cert, key, busy = args.serve
        serve(int(port), cert, key, float(busy), args.batched)
        return
    binary = find_tool("wrk")
    if binary is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        self_signed(tmp)
        print("busy µs | writes  |   req/s | p50 ms | p99 ms | CPU µs/request")
        for busy in args.busy:
            runs: dict[str, list[Result]] = {mode: [] for mode in MODES}
            for _ in range(args.rounds):
                for mode in MODES:
                    runs[mode].append(measure(binary, tmp, busy, mode, args.duration))
            medians = {
                mode: [statistics.median(column) for column in zip(*results, strict=True)]
                for mode, results in runs.items()
            }
            for mode, (rps, p50, p99, cpu) in medians.items():
                print(f"{busy:7g} | {mode:<7} | {rps:7.0f} | {p50:6.2f} | {p99:6.2f} | {cpu:6.1f}")
            ratio = medians["batched"][0] / medians["at once"][0]
            print(f"{'':7} | batched / at once: {ratio:.2f}x req/s", flush=True)


if __name__ == "__main__":
    main()
