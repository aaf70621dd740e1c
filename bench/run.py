#!/usr/bin/env python3
"""The gateway next to nginx (and one backend worker directly), on this machine, side by side.

Starts the whole stack on free loopback ports from a temp dir (backend workers, a static
upstream for the cache and transfer scenarios, the gateway, nginx with the gateway's own
certificate), runs wrk against each target in alternating order for several rounds, streams
large transfers while sampling the gateway's memory, prints tables and a summary block, and
stops every process it started, whatever happens.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType

import httpx

import abuse
import h2load
import hey
import wrk
import wsecho
from procstat import CpuWindow, machine_ticks
from report import (
    Measurement,
    Scenario,
    Target,
    Transfers,
    print_table,
    size_text,
    summary,
    transfer_text,
)
from stack import (
    BENCH,
    COMPRESS_CACHED_PREFIX,
    COMPRESS_JSON_SIZE,
    COMPRESS_PREFIX,
    REPO,
    STATIC_FILE,
    STATIC_FILE_SIZE,
    Stack,
    StackError,
    StackOptions,
    find_tool,
)
from transfer import MIB, transfer

SCENARIOS = (
    "json",
    "cache",
    "static",
    "websocket",
    "compress",
    "compress-cache",
    "download",
    "upload",
    "h2",
    "h2-cache",
    "slowloris",
    "idle-memory",
    "soak",
    "handshake",
    "half-load",
)
RESULTS = BENCH / "results" / "latest.txt"


def load(target: Target, opts: argparse.Namespace, duration: int) -> wrk.WrkResult:
    """wrk, or for ws:// and wss:// targets the WebSocket echo client (same -t/-c/-d)."""
    if target.url.startswith(("ws://", "wss://")):
        return wsecho.run(target.url, opts.ca_file, opts.threads, opts.connections, duration)
    if target.client == "h2load":
        return h2load.run(opts.h2load, target.url, opts.threads, duration)
    if target.client == "hey":
        return hey.run(opts.hey, target.url, opts.connections, target.rate, duration)
    return wrk.run(opts.wrk, target.url, opts.threads, opts.connections, duration, target.headers)


def measure(target: Target, opts: argparse.Namespace, duration: int) -> Measurement:
    trees = {"proxy": target.proxy, "origin": target.origin}
    with CpuWindow(trees) as cpu:
        result = load(target, opts, duration)
    proxy = cpu.percent["proxy"] if target.proxy else None
    ours = (proxy or 0.0) + cpu.percent["origin"] + cpu.reaped_percent + cpu.interrupt_percent
    other = max(0.0, cpu.machine_percent * (os.cpu_count() or 1) - ours)
    return Measurement(
        result, proxy, cpu.percent["origin"], cpu.reaped_percent, cpu.machine_percent, other
    )


def run_scenario(scenario: Scenario, opts: argparse.Namespace) -> None:
    targets = scenario.targets
    print(f"\n== {scenario.title}" + (f" [{scenario.label}]" if scenario.label else ""))
    for note in scenario.notes:
        print(f"   {note}")
    warmup = max(1, opts.duration // 5)
    for target in targets:
        # Not counted: fills keep-alive pools and caches, and pages everything in.
        load(target, opts, warmup)
    for round_no in range(opts.rounds):
        # Rotate the order each round so drift (thermal, page cache, neighbours) hits every
        # target alike.
        shift = round_no % len(targets)
        for target in targets[shift:] + targets[:shift]:
            time.sleep(opts.pause)
            m = measure(target, opts, opts.duration)
            scenario.runs.setdefault(target.name, []).append(m)
            r = m.result
            proxy = f"{target.name} {m.proxy_cpu:.0f}%, " if m.proxy_cpu is not None else ""
            print(
                f"   round {round_no + 1}/{opts.rounds}  {target.name:<8}"
                f"{r.requests_per_sec:>9.0f} r/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms"
                f"  errors: {r.error_text()}  CPU: {proxy}origin {m.origin_cpu:.0f}%,"
                f" wrk {m.wrk_cpu:.0f}%, other {m.other_cpu:.0f}%, machine {m.machine_cpu:.0f}%"
            )


def json_scenario(stack: Stack, echo_backend: bool) -> Scenario:
    assert stack.gateway is not None and stack.nginx is not None
    # /status answers from memory while /health also queries SQLite; the echo fallback only
    # has /health.
    path = "/health" if echo_backend else "/status"
    p = stack.ports
    backend = [proc.pid for proc in stack.backend]
    targets = [
        Target(
            "direct",
            "direct (1 worker, plain HTTP)",
            f"http://127.0.0.1:{p.backend[0]}{path}",
            [],
            backend,
        ),
        Target(
            "nginx",
            "nginx (HTTPS)",
            f"https://127.0.0.1:{p.nginx}{path}",
            [stack.nginx.pid],
            backend,
        ),
        Target(
            "gateway",
            "gateway (HTTPS)",
            f"https://127.0.0.1:{p.https}{path}",
            [stack.gateway.pid],
            backend,
        ),
    ]
    return Scenario("json", f"small JSON (GET {path})", targets)


def h2_scenario(stack: Stack, echo_backend: bool, cached: bool, threads: int) -> Scenario:
    """Small JSON or a cache hit over HTTP/2: h2load with h2load.STREAMS streams on each of
    h2load.CLIENTS connections, nginx ("listen ... ssl http2") next to the gateway."""
    assert stack.gateway is not None and stack.nginx is not None and stack.static is not None
    p = stack.ports
    if cached:
        path, origin = "/blob64k", [stack.static.pid]
        key, title = "h2-cache", "h2 cache hit 64 KiB"
    else:
        path = "/health" if echo_backend else "/status"
        origin = [proc.pid for proc in stack.backend]
        key, title = "h2", f"h2 JSON (GET {path})"
    targets = [
        Target(
            "nginx",
            "nginx (HTTPS, http2)",
            f"https://127.0.0.1:{p.nginx_h2}{path}",
            [stack.nginx.pid],
            origin,
            client="h2load",
        ),
        Target(
            "gateway",
            "gateway (HTTPS, h2)",
            f"https://127.0.0.1:{p.https}{path}",
            [stack.gateway.pid],
            origin,
            client="h2load",
        ),
    ]
    scenario = Scenario(key, title, targets)
    scenario.notes.append(
        f"h2load -c{h2load.CLIENTS} -m{h2load.STREAMS} -t{threads}: "
        f"{h2load.CLIENTS} connections x {h2load.STREAMS} streams"
    )
    return scenario


def cache_scenario(stack: Stack) -> Scenario:
    assert stack.gateway is not None and stack.nginx is not None and stack.static is not None
    p = stack.ports
    static = [stack.static.pid]
    targets = [
        Target(
            "nginx",
            "nginx (HTTPS, proxy_cache)",
            f"https://127.0.0.1:{p.nginx}/blob64k",
            [stack.nginx.pid],
            static,
        ),
        Target(
            "gateway",
            "gateway (HTTPS, cache)",
            f"https://127.0.0.1:{p.https}/blob64k",
            [stack.gateway.pid],
            static,
        ),
    ]
    return Scenario("cache", "cache hit 64 KiB", targets)


def handshake_scenario(stack: Stack, echo_backend: bool) -> Scenario:
    """New TLS handshakes per second: the small JSON request with ``Connection: close``, so
    wrk opens (and fully handshakes: it resumes no session) a new connection per request."""
    assert stack.gateway is not None and stack.nginx is not None
    path = "/health" if echo_backend else "/status"
    p = stack.ports
    backend = [proc.pid for proc in stack.backend]
    close = ("Connection: close",)
    targets = [
        Target(
            "nginx",
            "nginx (HTTPS, 1 req/conn)",
            f"https://127.0.0.1:{p.nginx}{path}",
            [stack.nginx.pid],
            backend,
            close,
        ),
        Target(
            "gateway",
            "gateway (HTTPS, 1 req/conn)",
            f"https://127.0.0.1:{p.https}{path}",
            [stack.gateway.pid],
            backend,
            close,
        ),
    ]
    scenario = Scenario("handshake", "TLS handshakes (1 req/conn)", targets)
    scenario.notes.append("req/s = new TLS connections/s: wrk -H 'Connection: close'")
    return scenario


def half_load_scenario(stack: Stack, opts: argparse.Namespace) -> Scenario:
    """p99 latency when neither proxy is saturated: hey offers both the same fixed rate, half
    of what the gateway reached with wrk just before (small JSON, keep-alive)."""
    assert stack.gateway is not None and stack.nginx is not None
    json = json_scenario(stack, opts.echo_backend)
    gateway = next(t for t in json.targets if t.name == "gateway")
    peak = load(gateway, opts, opts.duration).requests_per_sec
    rate = max(peak / 2, float(opts.connections))
    targets = [
        replace(t, label=t.label.replace("(HTTPS)", "(HTTPS, fixed rate)"), client="hey", rate=rate)
        for t in json.targets
        if t.name in ("nginx", "gateway")
    ]
    scenario = Scenario("half-load", f"p99 at half load ({rate:.0f} r/s)", targets)
    scenario.notes.append(
        f"hey -c{opts.connections} at {rate:.0f} req/s in total: half the gateway's "
        f"{peak:.0f} req/s (wrk, just before); compare p50/p99, not req/s"
    )
    return scenario


def static_scenario(stack: Stack) -> Scenario:
    """The same 64 KiB file from disk: Nginx ``root`` and the gateway's ``static`` route."""
    assert stack.gateway is not None and stack.nginx is not None
    p = stack.ports
    targets = [
        Target(
            "nginx",
            "nginx (HTTPS, root)",
            f"https://127.0.0.1:{p.nginx}{STATIC_FILE}",
            [stack.nginx.pid],
            [],
        ),
        Target(
            "gateway",
            "gateway (HTTPS, static)",
            f"https://127.0.0.1:{p.https}{STATIC_FILE}",
            [stack.gateway.pid],
            [],
        ),
    ]
    return Scenario("static", "static file 64 KiB", targets)


def websocket_scenario(stack: Stack) -> Scenario:
    """Echo round trips over upgraded connections to the WebSocket upstream: directly, through
    nginx (proxy_http_version 1.1 + Upgrade/Connection headers) and through the gateway."""
    assert stack.gateway is not None and stack.nginx is not None and stack.ws is not None
    p = stack.ports
    origin = [stack.ws.pid]
    targets = [
        Target("direct", "direct (plain ws://)", f"ws://127.0.0.1:{p.ws}/ws/echo", [], origin),
        Target(
            "nginx",
            "nginx (wss://)",
            f"wss://127.0.0.1:{p.nginx}/ws/echo",
            [stack.nginx.pid],
            origin,
        ),
        Target(
            "gateway",
            "gateway (wss://)",
            f"wss://127.0.0.1:{p.https}/ws/echo",
            [stack.gateway.pid],
            origin,
        ),
    ]
    scenario = Scenario("websocket", "WebSocket echo 64 B", targets)
    scenario.notes.append(
        "req/s = round trips/s: one 64-byte text message in flight per connection "
        "(bench/wsecho.py; -t = client processes, -c = connections)"
    )
    return scenario


def compress_scenario(stack: Stack, cached: bool) -> Scenario:
    """A 64 KiB JSON document gzipped for a client that accepts gzip: the gateway's compress
    middleware vs nginx ``gzip on`` at the same level (6).  ``cached``: both proxies also
    cache it (the gateway stores the gzip variant; nginx stores identity and gzips per hit)."""
    assert stack.gateway is not None and stack.nginx is not None and stack.static is not None
    p = stack.ports
    prefix, label = (COMPRESS_CACHED_PREFIX, ", cached") if cached else (COMPRESS_PREFIX, "")
    path = f"{prefix}/json?n={COMPRESS_JSON_SIZE}" + ("&cc=max-age%3D3600" if cached else "")
    gzip = ("Accept-Encoding: gzip",)
    static = [stack.static.pid]
    targets = [
        Target(
            "nginx",
            f"nginx (HTTPS, gzip on{label})",
            f"https://127.0.0.1:{p.nginx}{path}",
            [stack.nginx.pid],
            static,
            gzip,
        ),
        Target(
            "gateway",
            f"gateway (HTTPS, compress{label})",
            f"https://127.0.0.1:{p.https}{path}",
            [stack.gateway.pid],
            static,
            gzip,
        ),
    ]
    name = "compress-cache" if cached else "compress"
    return Scenario(name, f"gzip JSON 64 KiB{label}", targets)


def check_compress(stack: Stack, scenario: Scenario) -> None:
    """Both answer gzip that decodes to the same 64 KiB document; note the sizes."""
    with client(stack) as http:
        documents = set()
        for target in scenario.targets:
            for _ in range(3):  # the cached variant: the second answer is a hit
                response = http.get(target.url, headers={"Accept-Encoding": "gzip"})
            encoding = response.headers.get("content-encoding")
            if response.status_code != 200 or encoding != "gzip":
                raise StackError(
                    f"{target.label}: GET {target.url} -> {response.status_code}, "
                    f"Content-Encoding {encoding} (want 200 and gzip)"
                )
            documents.add(response.content)
            scenario.notes.append(
                f"{target.name}: {len(response.content)} bytes sent as "
                f"{response.num_bytes_downloaded} gzip bytes"
                + (
                    f", X-Cache {response.headers.get('x-cache')}"
                    if target.name == "gateway"
                    else ""
                )
            )
        if len(documents) != 1 or len(documents.pop()) != COMPRESS_JSON_SIZE:
            raise StackError("nginx and the gateway do not send the same 64 KiB JSON document")


def check_websocket(stack: Stack, scenario: Scenario) -> None:
    """Every target upgrades and echoes before timing."""
    for target in scenario.targets:
        problem = wsecho.probe(target.url, str(stack.ca_file))
        if problem is not None:
            raise StackError(f"{target.label}: {target.url}: {problem}")


# --- pre-flight checks of the responses --------------------------------------------------------


def client(stack: Stack) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    return httpx.Client(verify=context, timeout=10.0)


def check_json(stack: Stack, scenario: Scenario) -> None:
    """Every target answers 200 before timing, and the gateway does not serve it from cache."""
    with client(stack) as http:
        for target in scenario.targets:
            status, response = "no answer", None
            for _ in range(20):  # bounded: the gateway may still be marking servers UP
                try:
                    response = http.get(target.url)
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = f"{type(exc).__name__}: {exc}"
                if status == "200":
                    break
                time.sleep(0.25)
            if response is None or status != "200":
                raise StackError(f"{target.label}: GET {target.url} -> {status}")
            if target.name == "gateway" and response.headers.get("x-cache", "").upper() == "HIT":
                scenario.notes.append("WARNING: the gateway served this from its cache")


def warm_cache(stack: Stack, scenario: Scenario) -> None:
    """Fill both caches and confirm that the next request is a hit."""
    headers = {"nginx": "x-cache-status", "gateway": "x-cache"}
    with client(stack) as http:
        for target in scenario.targets:
            status = "-"
            for _ in range(5):
                response = http.get(target.url)
                if response.status_code != 200 or len(response.content) != 65536:
                    raise StackError(
                        f"{target.label}: GET {target.url} -> {response.status_code}, "
                        f"{len(response.content)} bytes (want 200 and 65536 bytes)"
                    )
                status = response.headers.get(headers[target.name], "(no header)")
                if status.upper().startswith("HIT"):
                    break
                time.sleep(0.1)
            hit = status.upper().startswith("HIT")
            scenario.notes.append(
                f"{target.name}: {headers[target.name]}: {status}"
                + ("" if hit else "  <- no cache hit")
            )
            if target.name == "gateway" and not hit:
                scenario.label = "cache not active"
                print(
                    "WARNING: the gateway shows no X-Cache: HIT after warming (cache not wired "
                    "yet?); running the scenario anyway, labelled 'cache not active'",
                    file=sys.stderr,
                )
            elif not hit:
                raise StackError(f"{target.label}: no cache hit after warming ({status})")


def check_static(stack: Stack, scenario: Scenario) -> None:
    """Both serve the very same bytes, with a validator, before timing."""
    with client(stack) as http:
        bodies = set()
        for target in scenario.targets:
            response = http.get(target.url)
            if response.status_code != 200 or len(response.content) != STATIC_FILE_SIZE:
                raise StackError(
                    f"{target.label}: GET {target.url} -> {response.status_code}, "
                    f"{len(response.content)} bytes (want 200 and {STATIC_FILE_SIZE} bytes)"
                )
            if "etag" not in response.headers:
                raise StackError(f"{target.label}: GET {target.url} has no ETag")
            bodies.add(response.content)
        if len(bodies) != 1:
            raise StackError("nginx and the gateway serve different bytes for the static file")


# --- transfers --------------------------------------------------------------------------------


def run_transfer(stack: Stack, direction: str, size: int, opts: argparse.Namespace) -> Transfers:
    assert stack.gateway is not None
    gateway_url = f"https://127.0.0.1:{stack.ports.https}"
    nginx_url = f"https://127.0.0.1:{stack.ports.nginx}"
    print(f"\n== {size_text(size)} {direction} (streamed, {opts.client})")
    time.sleep(opts.pause)  # let the gateway's RSS settle before the baseline
    gw = transfer(direction, gateway_url, size, stack.ca_file, opts.curl, stack.gateway.pid)
    print(f"   gateway  {transfer_text(gw)}")
    time.sleep(opts.pause)
    ng = transfer(direction, nginx_url, size, stack.ca_file, opts.curl)
    print(f"   nginx    {transfer_text(ng)}")
    return Transfers(direction, gw, ng)


def run_abuse(stack: Stack, opts: argparse.Namespace) -> list[str]:
    """The issue-13 scenarios (bench/abuse.py), gateway then nginx; their summary lines."""
    assert stack.gateway is not None and stack.nginx is not None
    path = "/health" if opts.echo_backend else "/status"
    targets = (
        ("gateway", stack.ports.https, stack.gateway.pid),
        ("nginx", stack.ports.nginx, stack.nginx.pid),
    )
    lines: list[str] = []
    if "slowloris" in opts.scenarios:
        # Long enough for the gateway's header_timeout (10 s); nginx's is 60 s.
        seconds = 15.0
        print(
            f"\n== slowloris: {opts.slow_sockets} sockets, a header line every 5 s, {seconds:.0f} s"
        )
        for name, port, _ in targets:
            time.sleep(opts.pause)
            result = abuse.slowloris(
                name, port, stack.ca_file, path, opts.slow_sockets, 5.0, seconds
            )
            print(f"   {result.text()}")
            lines.append(f"slowloris  {result.text()}")
    if "idle-memory" in opts.scenarios:
        print("\n== idle memory: 1000 TLS connections after one request each")
        for name, port, pid in targets:
            time.sleep(opts.pause)
            idle = abuse.idle_memory(name, port, stack.ca_file, path, pid, 1000)
            print(f"   {idle.text()}")
            lines.append(f"idle mem   {idle.text()}")
    if "soak" in opts.scenarios:
        print(f"\n== soak: {opts.soak_seconds} s of wrk load per target, RSS every second")
        for name, port, pid in targets:
            url = f"https://127.0.0.1:{port}{path}"
            result = abuse.soak(
                name, opts.wrk, url, pid, opts.soak_seconds, opts.threads, opts.connections
            )
            print(f"   {result.text()}")
            lines.append(f"soak       {result.text()}")
    return lines


# --- set-up -----------------------------------------------------------------------------------


def ensure_tools() -> tuple[str, str]:
    """nginx, wrk and hey, installed with apt-get only when missing."""
    missing = [name for name in ("nginx", "wrk", "hey") if find_tool(name) is None]
    if missing:
        packages = ["nginx-light" if m == "nginx" else m for m in missing]
        print(f"{', '.join(missing)} not found: apt-get install -y {' '.join(packages)}")
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        if sudo and shutil.which("sudo") is None:
            raise SystemExit(f"need root (or sudo) to install {', '.join(packages)}")
        for argv in (
            [*sudo, "apt-get", "update"],
            [*sudo, "apt-get", "install", "-y", *packages],
        ):
            print("+ " + " ".join(argv), flush=True)
            subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, timeout=900)
    nginx, wrk_path = find_tool("nginx"), find_tool("wrk")
    if nginx is None or wrk_path is None:
        raise SystemExit("nginx or wrk is still missing after apt-get install")
    return nginx, wrk_path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark the gateway against nginx and a backend worker, side by side.",
    )
    parser.add_argument("--workers", type=int, default=2, help="backend workers (default: 2)")
    parser.add_argument(
        "--proxy-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes per proxy: nginx worker_processes and the gateway's [gateway] workers "
        "(default: the CPU count, as nginx's 'auto')",
    )
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default: 3)")
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default: 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default: 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t (default: 2)")
    parser.add_argument(
        "--transfer-mib", type=int, help="size of the streamed transfers in MiB (default: 1024)"
    )
    parser.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the cache-hit scenario (default: on)",
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="access logs in the gateway and, to match, in nginx (default: on)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable; default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 1 round, 3 s runs, 64 MiB transfers (explicit flags still win)",
    )
    parser.add_argument(
        "--slow-sockets",
        type=int,
        default=300,
        help="slowloris: slow sockets per target (default: 300); idle-memory opens 1000",
    )
    parser.add_argument(
        "--soak-seconds",
        type=int,
        help="soak: seconds of load per target (default: 30, --quick 10; 600 for the "
        "10-minute soak)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    parser.add_argument(
        "--echo-backend",
        action="store_true",
        help="development fallback: tests/support/echo_upstream.py instead of run_backend.py",
    )
    opts = parser.parse_args(argv)
    quick = opts.quick
    opts.rounds = opts.rounds or (1 if quick else 3)
    opts.duration = opts.duration or (3 if quick else 10)
    opts.transfer_mib = opts.transfer_mib or (64 if quick else 1024)
    opts.pause = 0.5 if quick else 1.0
    opts.soak_seconds = opts.soak_seconds or (10 if quick else 30)
    if min(opts.workers, opts.rounds, opts.duration, opts.threads, opts.transfer_mib) < 1:
        parser.error("--workers, --rounds, --duration, --threads, --transfer-mib must be >= 1")
    if opts.connections < opts.threads:
        parser.error("--connections must be at least --threads (wrk needs one per thread)")
    chosen = opts.scenario or list(SCENARIOS)
    opts.scenarios = [
        s
        for s in SCENARIOS
        if s in chosen and (s not in ("cache", "compress-cache", "h2-cache") or opts.cache)
    ]
    return opts


def machine_busy(seconds: float) -> float:
    """% of all cores busy over ``seconds``."""
    busy0, _, total0 = machine_ticks()
    time.sleep(seconds)
    busy1, _, total1 = machine_ticks()
    return 100 * (busy1 - busy0) / max(total1 - total0, 1)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally block stops every child.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    # Progress lines should show up as they happen, in order with warnings, even in a pipe.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    opts = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    opts.nginx, opts.wrk = ensure_tools()
    version = subprocess.run([opts.nginx, "-v"], capture_output=True, text=True).stderr
    opts.nginx_version = version.strip().rpartition(": ")[2].replace("/", " ") or "nginx"
    opts.curl = find_tool("curl")
    opts.client = "curl" if opts.curl else "httpx"
    if not opts.echo_backend and not (REPO / "run_backend.py").is_file():
        print("run_backend.py is missing; --echo-backend runs the echo upstream instead")
        return 1

    # Other work on the box skews every number: measure it before adding ours.
    opts.idle_busy = machine_busy(1.0)
    if opts.idle_busy > 10:
        print(f"WARNING: the machine is {opts.idle_busy:.0f}% busy before the bench starts")
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    stack: Stack | None = None
    scenarios: list[Scenario] = []
    transfers: list[Transfers] = []
    try:
        options = StackOptions(
            opts.workers,
            opts.access_log,
            opts.cache,
            opts.echo_backend,
            opts.nginx,
            proxy_workers=opts.proxy_workers,
        )
        stack = Stack(tmp, options)
        print(f"starting the stack in {tmp} ...", flush=True)
        stack.start()
        p = stack.ports
        print(
            f"  backend {p.backend} ({'echo_upstream' if opts.echo_backend else 'run_backend.py'})"
            f", static upstream {p.static}, gateway https {p.https}, nginx https {p.nginx}"
        )
        started = stack

        def measure(scenario: Scenario, prepare: Callable[[Stack, Scenario], None]) -> None:
            """Check (or warm) what both proxies answer, then run the scenario's rounds."""
            prepare(started, scenario)
            run_scenario(scenario, opts)
            scenarios.append(scenario)

        if "json" in opts.scenarios:
            measure(json_scenario(stack, opts.echo_backend), check_json)
        if "cache" in opts.scenarios:
            measure(cache_scenario(stack), warm_cache)
        if "static" in opts.scenarios:
            measure(static_scenario(stack), check_static)
        if "websocket" in opts.scenarios:
            opts.ca_file = str(stack.ca_file)
            measure(websocket_scenario(stack), check_websocket)
        for name, cached in (("compress", False), ("compress-cache", True)):
            if name in opts.scenarios:
                measure(compress_scenario(stack, cached), check_compress)
        for name, cached in (("h2", False), ("h2-cache", True)):
            if name in opts.scenarios:
                opts.h2load = find_tool("h2load")
                if opts.h2load is None:
                    raise StackError("h2load not found: apt-get install -y nghttp2-client")
                scenario = h2_scenario(stack, opts.echo_backend, cached, opts.threads)
                measure(scenario, warm_cache if cached else check_json)
        if "handshake" in opts.scenarios:
            measure(handshake_scenario(stack, opts.echo_backend), check_json)
        if "half-load" in opts.scenarios:
            opts.hey = find_tool("hey")
            if opts.hey is None:
                raise StackError("hey not found: apt-get install -y hey")
            measure(half_load_scenario(stack, opts), check_json)
        size = opts.transfer_mib * MIB
        for direction in ("download", "upload"):
            if direction in opts.scenarios:
                transfers.append(run_transfer(stack, direction, size, opts))
        abuse_lines = run_abuse(stack, opts)

        print("\n" + "=" * 100)
        for scenario in scenarios:
            print_table(scenario)
        text = summary(opts, scenarios, transfers)
        if abuse_lines:
            text += "\n" + "\n".join(abuse_lines)
        print("\n" + text)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(text + "\n")
        print(f"\n(summary written to {RESULTS.relative_to(REPO)})")
        return 0
    except (StackError, RuntimeError, httpx.HTTPError) as exc:
        print(f"\nbench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        # A second Ctrl-C must not cut the clean-up short (every wait in it is bounded).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if stack is not None:
            stack.stop()
        if opts.keep:
            print(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
