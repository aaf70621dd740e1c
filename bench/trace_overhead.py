"""Trace mode costs nothing when off: ``GatewayApp`` driven in-process against a fake upstream.

    .venv/bin/python bench/trace_overhead.py [--requests N] [--rounds R] [--before DIR]

Each run is a subprocess that imports the ``gateway`` package from a source tree, builds a
``GatewayApp`` for a config, starts a fake upstream (an asyncio server on 127.0.0.1 answering
every request with a small keep-alive 200), and pushes N requests one after another through
``app(scope, receive, send)``: validation, routing, the real proxy handler and connection pool,
and for the ``cache-hit`` scenario the cache answering.  It prints the process's CPU
microseconds per request (``time.process_time``: wall time on a shared machine mostly measures
the neighbours).

``--before DIR`` is a copy of the ``gateway`` package without the trace instrumentation; the
variants run interleaved, ``rounds`` times each, and the median is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n"
    b"cache-control: %s\r\n\r\nhello, world\n"
)


async def _fake_upstream(cache_control: bytes) -> asyncio.Server:
    answer = RESPONSE % cache_control

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def _run(scenario: str, trace: bool, requests: int) -> float:
    from gateway.app import GatewayApp
    from gateway.config import parse_settings
    from gateway.upstream.group import Upstream

    cached = scenario == "cache-hit"
    server = await _fake_upstream(b"max-age=3600" if cached else b"no-store")
    port = server.sockets[0].getsockname()[1]
    gateway: dict[str, Any] = {"access_log": False}
    if trace:
        gateway["trace"] = True
    config = {
        "gateway": gateway,
        "upstreams": {"app": {"servers": [f"http://127.0.0.1:{port}"]}},
        "routes": [{"path_prefix": "/", "upstream": "app"}],
        "cache": {"enabled": cached},
    }
    settings = parse_settings(config, ROOT / "bench.toml")
    upstreams = {name: Upstream(u) for name, u in settings.upstreams.items()}
    app = GatewayApp(settings, upstreams)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    def scope() -> dict[str, Any]:
        return {
            "type": "http",
            "http_version": "1.1",
            "method": "GET",
            "scheme": "https",
            "path": "/bench",
            "raw_path": b"/bench",
            "query_string": b"",
            "headers": [(b"host", b"localhost"), (b"accept", b"*/*")],
            "client": ("127.0.0.1", 50000),
        }

    for _ in range(200):  # warm up: pooled connection, cache entry, code paths
        await app(scope(), receive, send)
    # CPU time of this process (the app and the fake upstream both run in it): on a shared
    # machine, wall time mostly measures the neighbours.
    started = time.process_time()
    for _ in range(requests):
        await app(scope(), receive, send)
    elapsed = time.process_time() - started
    for upstream in upstreams.values():
        upstream.close()
    server.close()
    return elapsed / requests * 1e6


def _child(args: argparse.Namespace) -> None:
    import logging

    sys.path.insert(0, args.source)
    logging.disable(logging.CRITICAL)  # trace blocks would be formatted, never printed
    micros = asyncio.run(_run(args.scenario, args.trace, args.requests))
    print(json.dumps({"us": micros}))


def _measure(source: Path, scenario: str, trace: bool, requests: int) -> float:
    argv = [sys.executable, __file__, "--child", "--source", str(source)]
    argv += ["--scenario", scenario, "--requests", str(requests)]
    if trace:
        argv.append("--trace")
    out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd="/")
    return float(json.loads(out.stdout.splitlines()[-1])["us"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", type=Path, help="source tree without the instrumentation")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", default=str(ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--scenario", default="proxy", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    variants: list[tuple[str, Path, bool]] = []
    if args.before is not None:
        variants.append(("before (no instrumentation)", args.before, False))
    variants += [("after, trace off", ROOT, False), ("after, trace on", ROOT, True)]
    for scenario in ("proxy", "cache-hit"):
        results: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        for _ in range(args.rounds):
            for name, source, trace in variants:
                results[name].append(_measure(source, scenario, trace, args.requests))
        print(f"{scenario}: {args.requests} requests x {args.rounds} rounds, CPU µs/request")
        for name, values in results.items():
            print(
                f"  {name:<28} median {statistics.median(values):7.2f}"
                f"  min {min(values):7.2f}  max {max(values):7.2f}"
            )


if __name__ == "__main__":
    main()
