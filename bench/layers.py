#!/usr/bin/env python3
"""What each layer of a cache hit costs: CPU per request, one process per server, side by side.

    .venv/bin/python bench/layers.py [--rounds 3] [--duration 8]

Six servers answer the same bytes over TLS with the gateway's certificate (``/small``, 34 bytes
of JSON, and ``/big``, 64 KiB), each as one process, each loaded by ``wrk -t1 -c32`` in turn:

- ``floor``: the gateway's TLS transport (OpenSSL on the socket) and httptools' parser,
  fixed bytes written from the parser callback (``layers_servers.py``): the least this stack
  can do per request;
- ``uvloop tls``: the same on uvloop's TLS transport (memory BIOs), the gateway's until
  session 10;
- ``uvicorn``: uvicorn's HTTP/1.1 protocol, scope, cycle and task around a raw ASGI app;
- ``gateway hot``: the gateway's cache hit as the listener answers it (``gateway.cache.hot``);
- ``gateway full``: the same hit through the whole request path (a request field the hot
  path does not know sends it there);
- ``nginx``: nginx serving the same bytes from files, access log on like the gateway's.

A fourth column, ``proxied``, prices a proxied request (``/nc/small``, forwarded to the
origin as ``/small`` on a keep-alive pool, the cache passed by) on three servers:
``floor proxy`` (``layers_servers.py floor-proxy``: the floor's protocol forwarding each
request on a pooled upstream connection, with the forwarding fields but none of the gateway's
checks, routing, logs or metrics: the least Python that proxies on this stack),
``gateway proxy`` (a route with ``cache = false``, on the express lane) and nginx
(``proxy_pass`` with ``keepalive 64``).

A third column sends ``/small`` with ``Connection: close``: every request is a new connection
with a full TLS handshake (wrk resumes no session), so it prices a connection.

CPU per request is the server's utime + stime from /proc over the run, divided by the requests
wrk counted: independent of how much CPU wrk took.  Medians of ``--rounds``, alternating.
Note that it still depends on the rate: a server answering fewer requests a second pays more
per request in the kernel (each reply wakes an idle client instead of joining a busy one's
batch), so a slower server's figure includes some of that (bench/README.md, "The layers").
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

import wrk
from procstat import cpu_seconds, descendants
from stack import Process, StackError, find_tool, wait_log_line, wait_port

SERVERS = Path(__file__).resolve().parent / "layers_servers.py"
SMALL = b'{"status":"ok","service":"origin"}'
TARGETS = (
    "floor",
    "uvloop tls",
    "uvicorn",
    "gateway hot",
    "gateway full",
    "floor proxy",
    "gateway proxy",
    "nginx",
)
# (column, path, wrk -H): a keep-alive small and 64 KiB request, a new connection each time,
# and a proxied small request.
KINDS = (
    ("small", "small", ()),
    ("64 KiB", "big", ()),
    ("new connection", "small", ("Connection: close",)),
    ("proxied", "nc/small", ()),
)
PROXIES = frozenset({"floor proxy", "gateway proxy", "nginx"})


def serves(target: str, kind: str) -> bool:
    """Which servers take part in which column: the proxies in ``proxied`` only (nginx in
    all of them)."""
    return target == "nginx" or (kind == "proxied") == (target in PROXIES)


# A field no hot hit accepts (gateway.cache.hot.INERT_FIELDS): the full path answers.
FULL_PATH = "X-Full-Path: 1"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def gateway_config(https: int, http: int, origin: int) -> str:
    return f"""# Written by bench/layers.py
[gateway]
host = "127.0.0.1"
https_port = {https}
http_port = {http}
hostnames = ["localhost"]
access_log = "logs/gateway-access.log"
workers = 1

[tls]
dir = "certs"

[upstreams.origin]
servers = ["http://127.0.0.1:{origin}"]
health_path = "/small"

[[routes]]
path_prefix = "/"
upstream = "origin"

[[routes]]
path_prefix = "/nc"
upstream = "origin"
strip_prefix = true
cache = false

[cache]
enabled = true
"""


def nginx_config(tmp: Path, port: int, origin: int) -> str:
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""# Written by bench/layers.py
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/logs/nginx-error.log;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log {tmp}/logs/nginx-access.log combined;
    keepalive_requests 1000000;
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {tmp}/certs/cert.pem;
        ssl_certificate_key {tmp}/certs/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            root {tmp}/www;
            default_type application/json;
            add_header cache-control "public, max-age=3600";
        }}
        location /nc/ {{
            proxy_pass http://origin/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
        }}
    }}
}}
"""


class Layers:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.processes: dict[str, Process] = {}
        self.urls: dict[str, str] = {}

    def start(self, nginx: str) -> None:
        tmp = self.tmp
        (tmp / "logs").mkdir()
        www = tmp / "www"
        www.mkdir()
        (www / "small").write_bytes(SMALL)
        (www / "big").write_bytes((b"0123456789abcdef" * 4096)[:65536])
        origin, https, http, floor, uvloop_tls, uvicorn, nginx_port, floor_proxy = free_ports(8)
        python = sys.executable
        self._run("origin", [python, str(SERVERS), "origin", str(origin), str(www)])
        wait_port(self.processes["origin"], origin)
        config = tmp / "gateway.toml"
        config.write_text(gateway_config(https, http, origin))
        self._run("gateway", [python, "-m", "gateway", "run", "--config", str(config)])
        wait_log_line(self.processes["gateway"], "gateway ready")
        cert, key = str(tmp / "certs" / "cert.pem"), str(tmp / "certs" / "key.pem")
        self._run("floor", [python, str(SERVERS), "floor", str(floor), cert, key, str(www)])
        self._run(
            "uvloop tls",
            [python, str(SERVERS), "uvloop-tls", str(uvloop_tls), cert, key, str(www)],
        )
        self._run("uvicorn", [python, str(SERVERS), "uvicorn", str(uvicorn), cert, key, str(www)])
        self._run(
            "floor proxy",
            [python, str(SERVERS), "floor-proxy", str(floor_proxy), cert, key, str(origin)],
        )
        (tmp / "nginx.conf").write_text(nginx_config(tmp, nginx_port, origin))
        self._run("nginx", [nginx, "-c", str(tmp / "nginx.conf")])
        for name, port in (
            ("floor", floor),
            ("uvloop tls", uvloop_tls),
            ("uvicorn", uvicorn),
            ("floor proxy", floor_proxy),
            ("nginx", nginx_port),
        ):
            wait_port(self.processes[name], port)
        base = "https://127.0.0.1:{}"
        self.urls = {
            "floor": base.format(floor),
            "uvloop tls": base.format(uvloop_tls),
            "uvicorn": base.format(uvicorn),
            "gateway hot": base.format(https),
            "gateway full": base.format(https),
            "floor proxy": base.format(floor_proxy),
            "gateway proxy": base.format(https),
            "nginx": base.format(nginx_port),
        }
        self._check()

    def _run(self, name: str, argv: list[str]) -> None:
        process = Process(name, argv, self.tmp / "logs" / f"{name}.log")
        self.processes[name] = process
        process.start()

    def _check(self) -> None:
        """Every server answers both bodies alike; the gateway's are stored and published."""
        with httpx.Client(verify=str(self.tmp / "certs" / "ca.pem"), trust_env=False) as client:
            for size in ("small", "big"):
                want = (self.tmp / "www" / size).read_bytes()
                for _ in range(3):  # the gateway: a miss, a full-path hit, a hot hit
                    for name, url in self.urls.items():
                        response = client.get(f"{url}/{size}")
                        if response.status_code != 200 or response.content != want:
                            raise StackError(f"{name} /{size}: {response.status_code}")
            want = (self.tmp / "www" / "small").read_bytes()
            for name in PROXIES:
                response = client.get(f"{self.urls[name]}/nc/small")
                if response.status_code != 200 or response.content != want:
                    raise StackError(f"{name} /nc/small: {response.status_code}")

    def pid(self, target: str) -> int:
        process = self.processes.get(target) or self.processes[target.split()[0]]
        return process.pid

    def measure(
        self, binary: str, target: str, path: str, extra: tuple[str, ...], duration: int
    ) -> tuple[float, float]:
        """(requests/s, CPU µs per request) of one run."""
        headers = (FULL_PATH, *extra) if target == "gateway full" else extra
        url = f"{self.urls[target]}/{path}"
        wrk.run(binary, url, 1, 32, 1, headers)  # warm the connections and the caches
        pids = descendants(self.pid(target))
        before = cpu_seconds(pids)
        result = wrk.run(binary, url, 1, 32, duration, headers)
        used = cpu_seconds(pids) - before
        if result.errors or not result.requests:
            raise StackError(f"{target} {url}: errors {result.error_text()}")
        return result.requests_per_sec, used / result.requests * 1e6

    def stop(self) -> None:
        for process in reversed(self.processes.values()):
            process.stop(grace=5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--json", type=Path, help="also write the medians here")
    parser.add_argument(
        "--kind",
        action="append",
        choices=[kind for kind, _, _ in KINDS],
        help="only these columns (repeatable; default: all)",
    )
    args = parser.parse_args()
    kinds = [k for k in KINDS if args.kind is None or k[0] in args.kind]
    binary, nginx = find_tool("wrk"), find_tool("nginx")
    if binary is None or nginx is None:
        raise SystemExit("needs wrk and nginx (apt-get install -y wrk nginx-light)")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="pygateway-layers-") as directory:
        layers = Layers(Path(directory))
        try:
            layers.start(nginx)
            for round_ in range(args.rounds):
                order = TARGETS if round_ % 2 == 0 else tuple(reversed(TARGETS))
                for kind, path, extra in kinds:
                    for target in order:
                        if not serves(target, kind):
                            continue
                        measured = layers.measure(binary, target, path, extra, args.duration)
                        results.setdefault((target, kind), []).append(measured)
                        print(
                            f"  round {round_ + 1} {kind:14} {target:12} "
                            f"{measured[0]:9.0f} r/s {measured[1]:7.1f} µs/request",
                            flush=True,
                        )
        finally:
            layers.stop()
    medians = {
        key: (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
        for key, runs in results.items()
    }
    print(
        f"\nCPU per request, one process each, medians of {args.rounds} rounds "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores):\n"
    )
    print("| server | " + " | ".join(f"{kind}: µs/request | r/s" for kind, _, _ in kinds) + " |")
    print("|---|" + "---|---|" * len(kinds))
    for target in TARGETS:
        cells = [medians.get((target, kind)) for kind, _, _ in kinds]
        if not any(cells):
            continue
        print(
            f"| {target} | "
            + " | ".join(f"{c[1]:.1f} | {c[0]:.0f}" if c else "— | —" for c in cells)
            + " |"
        )
    print("\nnginx's CPU per request / each one's (above 1: cheaper than nginx):")
    for kind, _, _ in kinds:
        nginx_cpu = medians[("nginx", kind)][1]
        ratios = ", ".join(
            f"{t} {nginx_cpu / medians[(t, kind)][1]:.2f}x"
            for t in TARGETS
            if t != "nginx" and serves(t, kind)
        )
        print(f"  {kind}: {ratios}")
    if args.json:
        args.json.write_text(
            json.dumps({f"{t} {s}": list(v) for (t, s), v in medians.items()}, indent=1)
        )


if __name__ == "__main__":
    main()
