#!/usr/bin/env python3
"""Latency with no load: one keep-alive connection, sequential requests, direct vs nginx vs gateway.

    .venv/bin/python bench/latency.py [--requests 900] [--rounds 2] [--path /status]

Starts the bench stack (``stack.py``: backend workers, nginx and the gateway, 2 processes
each) and sends ``--requests`` GETs one after another over one connection to each target
(plain HTTP to one backend worker, HTTPS to nginx and to the gateway), timing each from the
first byte written to the last byte of the response read.  What a proxy adds per request when
nothing queues; under load, ``run.py``'s half-load scenario shows the queueing on top.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import ssl
import tempfile
import time
from pathlib import Path

from stack import Stack, StackOptions, find_tool


def response_end(buffer: bytes) -> bool:
    """A whole Content-Length-framed response is in ``buffer``."""
    head, found, body = buffer.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    raise SystemExit(f"no Content-Length in {head!r}")


def timings(port: int, ca: Path | None, path: str, requests: int) -> list[float]:
    """Milliseconds per request over one connection (TLS when ``ca`` is given)."""
    sock: socket.socket = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ca is not None:
        context = ssl.create_default_context(cafile=str(ca))
        sock = context.wrap_socket(sock, server_hostname="localhost")
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    result = []
    with sock:
        for _ in range(requests):
            started = time.perf_counter()
            sock.sendall(request)
            buffer = b""
            while not response_end(buffer):
                data = sock.recv(65536)
                if not data:
                    raise SystemExit(f"port {port} closed the connection")
                buffer += data
            result.append((time.perf_counter() - started) * 1000)
    return sorted(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Below the gateway's default keepalive_requests (1000), which would close the connection.
    parser.add_argument("--requests", type=int, default=900)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--path", default="/status")
    args = parser.parse_args()
    nginx = find_tool("nginx")
    if nginx is None:
        raise SystemExit("needs nginx (apt-get install -y nginx-light)")
    tmp = Path(tempfile.mkdtemp(prefix="pygateway-latency-"))
    stack = Stack(
        tmp,
        StackOptions(
            workers=2, access_log=True, cache=True, echo_backend=False, nginx=nginx, proxy_workers=2
        ),
    )
    stack.start()
    try:
        ports, ca = stack.ports, stack.certs / "ca.pem"
        targets = (("direct", ports.backend[0], None), ("nginx", ports.nginx, ca))
        targets += (("gateway", ports.https, ca),)
        for round_no in range(args.rounds):
            for name, port, cafile in targets:
                ms = timings(port, cafile, args.path, args.requests)
                p50, p90, p99 = (ms[int(len(ms) * q)] for q in (0.5, 0.9, 0.99))
                print(
                    f"round {round_no + 1}  {name:<8} p50 {p50:.3f} ms  p90 {p90:.3f} ms"
                    f"  p99 {p99:.3f} ms",
                    flush=True,
                )
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
