#!/usr/bin/env python3
"""The gateway's own CPU per request, without sockets or TLS: what the Python costs.

    .venv/bin/python bench/request_path.py [--requests 20000] [--rounds 5] [--before DIR]
    .venv/bin/python bench/request_path.py --instructions [--before DIR]
    .venv/bin/python bench/request_path.py --evict 2 [--requests 2000]
    .venv/bin/python bench/request_path.py --footprint [--before DIR]

``wrk`` against a real gateway measures everything at once (TLS, system calls, the kernel's
wake-ups, the neighbours on a 2-core machine) and moves by ±5% from run to run, more than most
changes to the request path are worth.  This drives the real listener protocol
(``gateway.listener``), the real ``GatewayApp``, proxy handler, cache, connection pool,
access log and metrics on uvloop, one request after another, over the in-memory transports of
``tests/support/memory_listener.py``: the client's request bytes go to the protocol's
``data_received``, the upstream connection answers each request head with the canned response
of a small JSON API on the next loop turn, and the driver waits for the response's last byte.
CPU time of the process (``time.process_time``) per request, medians of ``--rounds`` runs,
each in its own subprocess, alternating with ``--before`` (another source tree, e.g. a
``git worktree`` of an earlier commit) when given.

``--instructions`` counts instead of timing: each scenario runs under valgrind's callgrind
twice, with 1,000 and 3,000 measured requests, and the difference of the two instruction totals
over 2,000 is the instructions per request, start-up and warm-up excluded.  The same tree gives
the same count to ~0.1% whatever else the machine is doing (PYTHONHASHSEED is fixed), so an A/B
of a change worth 1% can be read on a busy machine; it does not see the kernel, and a change
that trades instructions for cache misses or system calls needs the timed runs.

``--evict MIB`` times each request after ``MIB`` MiB have been written over (one byte per
cache line), less the cost of that writing, measured in the same child: a request whose
caches the other processes of a 2-core machine evicted in between, as at half load.  2 MiB
(this machine's L2s) made a proxied request 11% dearer and a hot hit 26% (bench/README.md,
"Session 12"); the L3's 32 MiB makes the eviction itself cost more than its noise allows.

``--footprint`` counts what a request touches when it starts with cold caches: each scenario
runs under valgrind's cachegrind (32 KiB L1s, a 2 MiB last level), each request after 8 MiB
were written over, less the writing alone (a run of it without requests).  The last level's
misses per request are the distinct cache lines of code and data it needs: what a request costs
when the backend, the client and the other worker ran in between, as at half load, where each
miss waits for memory (bench/README.md, "Session 13").  Deterministic like ``--instructions``.

Scenarios: ``proxied`` (a GET the cache passes by, as ``bench/run.py --scenario json``),
``proxied, no cache`` (a route with ``cache = false``), ``cache hit`` (the full path: a
request field the hot path does not know), ``hot hit`` (``gateway.cache.hot``), and
``proxied, new conn`` and ``hot hit, new conn``: each request with ``Connection: close`` on a
listener protocol of its own, the Python a new connection adds (``--scenario handshake``
without the TLS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
JSON_BODY = b'{"status":"ok","service":"backend","version":"1.0.0"}'
PASSED_FIELDS = b"content-type: application/json\r\ndate: Mon, 07 Dec 2026 02:00:00 GMT\r\n"
STORED_FIELDS = b"content-type: application/json\r\ncache-control: public, max-age=3600\r\n"
UPSTREAM_RESPONSE = {
    kind: b"HTTP/1.1 200 OK\r\n%scontent-length: %d\r\n\r\n%s" % (fields, len(JSON_BODY), JSON_BODY)
    for kind, fields in (("pass", PASSED_FIELDS), ("hit", STORED_FIELDS))
}
# (path, extra request fields, upstream response) per scenario.
SCENARIOS: dict[str, tuple[bytes, bytes, str]] = {
    "proxied": (b"/status", b"", "pass"),
    "proxied, no cache": (b"/nocache/status", b"", "pass"),
    "cache hit": (b"/blob", b"x-full-path: 1\r\n", "hit"),
    "hot hit": (b"/blob", b"", "hit"),
    "proxied, new conn": (b"/status", b"", "pass"),
    "hot hit, new conn": (b"/blob", b"", "hit"),
}
# Each request on a connection of its own (``Connection: close``): the listener's per-connection
# Python (protocol, ``connection_made``, the close, ``connection_lost``) on top of the request.
NEW_CONNECTION = frozenset({"proxied, new conn", "hot hit, new conn"})


def _evictor(size: int) -> Callable[[], None]:
    """Writes one byte of every 64 (a cache line each) of a ``size``-byte buffer: what the
    client and the backend do to the caches between two requests on a shared core."""
    buffer = bytearray(size)
    zeros = bytes(len(range(0, size, 64)))

    def evict() -> None:
        buffer[0::64] = zeros

    return evict


async def _run(scenario: str, requests: int, evict_bytes: int = 0, footprint: str = "") -> float:
    from collections import deque

    from support.memory_listener import MemoryGateway

    path, extra, response = SCENARIOS[scenario]
    gw = MemoryGateway(
        {
            "gateway": {
                "hostnames": ["localhost"],
                "access_log": "access.log",
                "keepalive_requests": 1_000_000,
            },
            "upstreams": {"app": {"servers": ["http://127.0.0.1:9"]}},
            "routes": [
                {"path_prefix": "/", "upstream": "app"},
                {"path_prefix": "/nocache", "upstream": "app", "cache": False},
            ],
            "cache": {"enabled": True},
        },
        UPSTREAM_RESPONSE[response],
    )
    await gw.start()
    gw.server().requests = deque(maxlen=4)  # type: ignore[assignment]
    request = b"GET %s HTTP/1.1\r\nhost: localhost\r\nuser-agent: wrk\r\n%s\r\n" % (path, extra)
    for _ in range(3):  # a miss, a first pass or hit, then the steady state
        gw.send(request)
        last = await gw.response()
    if not last.endswith(JSON_BODY):
        raise SystemExit(f"{scenario}: unexpected response {last[-200:]!r}")
    size = len(last)
    loop = asyncio.get_running_loop()
    client = gw.client
    waiter: asyncio.Future[None] | None = None

    def on_write() -> None:
        if len(client.data) >= size and waiter is not None and not waiter.done():
            client.data.clear()
            waiter.set_result(None)

    client.on_write = on_write

    async def one() -> None:
        nonlocal waiter
        waiter = loop.create_future()
        gw.send(request)
        await waiter

    if scenario in NEW_CONNECTION:
        one = _new_connections(gw, request.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))

    for _ in range(500):
        await one()
    metrics = gw.app.metrics
    hot, express = metrics.hot_hits, getattr(metrics, "express", 0)
    if footprint:
        # One loop for cachegrind (``--footprint``): requests after the eviction, or the
        # eviction alone, whose difference is the requests' own.
        evict = _evictor(evict_bytes)
        for _ in range(requests):
            evict()
            if footprint == "requests":
                await one()
            else:
                await asyncio.sleep(0)
        return 0.0
    if evict_bytes:
        # Each request after the eviction, less the eviction alone (measured right after).
        evict = _evictor(evict_bytes)
        started = time.process_time()
        for _ in range(requests):
            evict()
            await one()
        elapsed = time.process_time() - started
        started = time.process_time()
        for _ in range(requests):
            evict()
            await asyncio.sleep(0)
        elapsed -= time.process_time() - started
    else:
        started = time.process_time()
        for _ in range(requests):
            await one()
        elapsed = time.process_time() - started
    answered_by = {
        "hot hit": metrics.hot_hits - hot,
        "express": getattr(metrics, "express", 0) - express,
    }
    print(json.dumps(answered_by), file=sys.stderr)
    return elapsed / requests * 1e6


def _new_connections(gw: Any, request: bytes) -> Callable[[], Awaitable[None]]:
    """``one()`` for the new-connection scenarios: a fresh listener protocol and client
    transport per request, made, fed, closed by the gateway, and lost, as a TLS connection
    after its handshake."""
    from support.memory_listener import ClientTransport

    loop = asyncio.get_running_loop()
    protocol_class, config, state = type(gw.protocol), gw.protocol.config, gw.protocol.server_state

    async def one() -> None:
        protocol = protocol_class(config=config, server_state=state, app_state={})
        client = ClientTransport()
        closed = loop.create_future()
        close = client.close

        def on_close() -> None:
            close()
            if not closed.done():
                closed.set_result(None)

        client.close = on_close  # type: ignore[method-assign]
        protocol.connection_made(client)
        protocol.data_received(request)
        await closed
        protocol.connection_lost(None)
        if not bytes(client.data).endswith(JSON_BODY):
            raise SystemExit(f"unexpected response {bytes(client.data)[-200:]!r}")

    return one


def _child(args: argparse.Namespace) -> None:
    import logging

    import uvloop

    sys.path.insert(0, args.source)
    sys.path.insert(1, str(Path(args.source) / "tests"))  # that tree's support.memory_listener
    logging.disable(logging.WARNING)
    micros = uvloop.run(_run(args.only, args.requests, args.evict << 20, args.footprint_loop))
    print(json.dumps({"us": micros}))


def _measure(source: Path, scenario: str, requests: int, evict: int = 0) -> float:
    argv = [sys.executable, __file__, "--child", "--source", str(source)]
    argv += ["--only", scenario, "--requests", str(requests), "--evict", str(evict)]
    out = subprocess.run(argv, capture_output=True, text=True, cwd="/")
    if out.returncode != 0:
        raise SystemExit(f"{source} {scenario}: {out.stdout}{out.stderr}")
    return float(json.loads(out.stdout.splitlines()[-1])["us"])


def _instructions(source: Path, scenario: str, requests: int) -> int:
    """Instructions of one child run under callgrind (start-up and warm-up included)."""
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    argv += [__file__, "--child", "--source", str(source), "--only", scenario]
    argv += ["--requests", str(requests)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run(argv, capture_output=True, text=True, cwd="/", env=env)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or found is None:
        raise SystemExit(f"{source} {scenario}: {out.stdout}{out.stderr[-2000:]}")
    return int(found.group(1))


FOOTPRINT_EVICT_MIB = 8  # four times the simulated last level: nothing of the last request stays
CACHES = ["--I1=32768,8,64", "--D1=32768,8,64", "--LL=2097152,16,64"]
# cachegrind's events, in the order of its summary line.
EVENTS = ("Ir", "I1mr", "ILmr", "Dr", "D1mr", "DLmr", "Dw", "D1mw", "DLmw")


def _cachegrind(source: Path, scenario: str, loop: str, requests: int) -> dict[str, int]:
    """cachegrind's totals for one child run (start-up and warm-up included)."""
    with tempfile.NamedTemporaryFile(suffix=".cachegrind") as out:
        argv = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", *CACHES]
        argv += [f"--cachegrind-out-file={out.name}", sys.executable, __file__, "--child"]
        argv += ["--source", str(source), "--only", scenario, "--requests", str(requests)]
        argv += ["--evict", str(FOOTPRINT_EVICT_MIB), "--footprint-loop", loop]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(argv, capture_output=True, text=True, cwd="/", env=env)
        if done.returncode != 0:
            raise SystemExit(f"{source} {scenario}: {done.stdout}{done.stderr[-2000:]}")
        for line in Path(out.name).read_text().splitlines():
            if line.startswith("summary:"):
                return dict(zip(EVENTS, map(int, line.split()[1:]), strict=True))
    raise SystemExit(f"{source} {scenario}: no summary in cachegrind's output")


def footprint_per_request(source: Path, scenario: str) -> dict[str, float]:
    """cachegrind's events per request after the eviction, the eviction's own taken out."""
    runs = [(loop, n) for loop in ("requests", "evict") for n in (100, 300)]
    with ThreadPoolExecutor(2) as pool:  # a child each: two cores
        r1, r3, e1, e3 = pool.map(lambda run: _cachegrind(source, scenario, *run), runs)
    return {name: ((r3[name] - r1[name]) - (e3[name] - e1[name])) / 200 for name in EVENTS}


def instructions_per_request(source: Path, scenario: str) -> float:
    return (_instructions(source, scenario, 3000) - _instructions(source, scenario, 1000)) / 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", type=Path, help="another source tree to compare with")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS))
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under callgrind"
    )
    parser.add_argument(
        "--evict",
        type=int,
        default=0,
        metavar="MIB",
        help="touch MIB MiB between requests (as the client and the backend do on a shared "
        "core) and time each request after it, less the touching itself",
    )
    parser.add_argument(
        "--footprint",
        action="store_true",
        help="count each request's last-level cache misses after 8 MiB were written over "
        "(cachegrind): the code and data lines it touches",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--footprint-loop", default="", help=argparse.SUPPRESS)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--source", default=str(ROOT), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    trees = [("after", ROOT)] if args.before is None else [("before", args.before), ("after", ROOT)]
    if args.footprint:
        if shutil.which("valgrind") is None:
            raise SystemExit("valgrind is not installed (apt-get install valgrind)")
        for scenario in args.scenario or list(SCENARIOS):
            for name, source in trees:
                e = footprint_per_request(source, scenario)
                code, data = e["ILmr"], e["DLmr"] + e["DLmw"]
                print(
                    f"{scenario:<18} {name:<6} cold: {code + data:6,.0f} lines "
                    f"({code:,.0f} code, {data:,.0f} data), {e['Ir'] / 1000:.1f}k instructions",
                    flush=True,
                )
        return
    if args.instructions:
        if shutil.which("valgrind") is None:
            raise SystemExit("valgrind is not installed (apt-get install valgrind)")
        for scenario in args.scenario or list(SCENARIOS):
            counts = {name: instructions_per_request(source, scenario) for name, source in trees}
            line = ", ".join(f"{name} {count / 1000:7.1f}k" for name, count in counts.items())
            if "before" in counts:
                line += f" ({counts['after'] / counts['before'] - 1:+.1%})"
            print(f"{scenario:<18} instructions/request: {line}", flush=True)
        return
    for scenario in args.scenario or list(SCENARIOS):
        results: dict[str, list[float]] = {name: [] for name, _ in trees}
        for _ in range(args.rounds):
            for name, source in trees:
                results[name].append(_measure(source, scenario, args.requests, args.evict))
        line = ", ".join(
            f"{name} {statistics.median(values):6.1f} (min {min(values):.1f})"
            for name, values in results.items()
        )
        print(f"{scenario:<18} µs/request: {line}", flush=True)


if __name__ == "__main__":
    main()
