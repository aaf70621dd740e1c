"""The processes under test: free ports, their config files, start-up, readiness and clean-up.

Every process runs in its own session (process group) with its output in a log file in the
temp dir, so a stop can reach the whole tree (uvicorn workers, nginx workers) with one signal
and nothing blocks on a full pipe.  Every wait is bounded by attempts and a deadline.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from gateway.tls.context import INTERMEDIATE_CIPHERS

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
NGINX_TEMPLATE = BENCH / "nginx.conf.template"
# Routed to the extra origin, tests/support/echo_upstream.py (the e2e tests' upstream).
STATIC_PATHS = ("/blob64k", "/bytes", "/upload")
# A file both proxies serve from disk (static-file scenario): TMP/www + this path, which is
# Nginx ``root`` semantics and the gateway's ``static`` without ``strip_prefix``.
STATIC_FILE = "/files/blob64k.bin"
STATIC_FILE_SIZE = 64 * 1024
# Compression scenario: the extra origin's /json?n=65536 behind these prefixes (stripped),
# through the gateway's compress middleware and nginx's gzip (the second one also cached).
COMPRESS_PREFIX = "/gz"
COMPRESS_CACHED_PREFIX = "/gzcache"
COMPRESS_JSON_SIZE = 64 * 1024


class StackError(Exception):
    """A process of the stack failed to start or become ready; the message says which."""


# --- ports ------------------------------------------------------------------------------------


def _bind(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def allocate_ports(count: int, consecutive: int) -> tuple[int, list[int]]:
    """A base of ``consecutive`` free ports in a row (the backend's base_port + i) and ``count``
    more free ports.  All sockets stay bound until the end so no port is handed out twice."""
    held: list[socket.socket] = []
    try:
        base = None
        for _ in range(100):
            first = _bind(0)
            assert first is not None
            held.append(first)
            start = first.getsockname()[1]
            if start + consecutive - 1 > 65535:
                continue
            extra = [_bind(start + i) for i in range(1, consecutive)]
            if all(s is not None for s in extra):
                held.extend(s for s in extra if s is not None)
                base = start
                break
            for s in extra:
                if s is not None:
                    s.close()
        if base is None:
            raise StackError(f"found no {consecutive} consecutive free ports on 127.0.0.1")
        others = []
        for _ in range(count):
            sock = _bind(0)
            assert sock is not None
            held.append(sock)
            others.append(sock.getsockname()[1])
        return base, others
    finally:
        for sock in held:
            sock.close()


@dataclass(frozen=True)
class Ports:
    backend_base: int
    workers: int
    https: int
    http: int
    nginx: int
    static: int
    ws: int  # the WebSocket echo upstream (websocket scenario)
    nginx_h2: int = 0  # nginx's second listener, "ssl http2" (the h2 scenarios)

    @property
    def backend(self) -> list[int]:
        return [self.backend_base + i for i in range(self.workers)]

    @classmethod
    def allocate(cls, workers: int) -> Ports:
        base, (https, http, nginx, static, ws, nginx_h2) = allocate_ports(6, workers)
        return cls(base, workers, https, http, nginx, static, ws, nginx_h2)


# --- processes --------------------------------------------------------------------------------


class Process:
    """One child process (and its descendants, via its process group)."""

    def __init__(
        self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # our own process group: one killpg stops the tree
                preexec_fn=_die_with_parent,
            )

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process (it stops its own workers gracefully), wait up to ``grace``
        seconds, then SIGKILL whatever is left in its process group."""
        if self.popen is None:
            return
        pid = self.popen.pid  # also the process group id, thanks to start_new_session
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} ignored SIGTERM for {grace:g}s: SIGKILL", file=sys.stderr)
        # Orphaned workers (or a stuck leader) would keep ports and CPU: sweep the group.
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is already empty
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            print(f"  {self.name} (pid {pid}) did not exit after SIGKILL", file=sys.stderr)

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def fail(self, problem: str) -> StackError:
        return StackError(f"{self.name} {problem}; last lines of {self.log}:\n{self.tail()}")


def _die_with_parent() -> None:
    # Linux prctl(PR_SET_PDEATHSIG, SIGTERM): should the bench itself be SIGKILLed, the
    # kernel still stops its children, so no nginx is left behind even then.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def wait_until(proc: Process, ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``ready`` every 0.1 s until it holds: bounded attempts, and give up at once if
    ``proc`` died.  ``what`` finishes the message "did not ... within N s"."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 1):
        if ready():
            return
        if not proc.running():
            raise proc.fail(f"exited with status {proc.popen.returncode if proc.popen else '?'}")
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise proc.fail(f"did not {what} within {timeout:g}s")


def wait_http_ok(proc: Process, url: str, timeout: float = 60.0) -> None:
    """Until ``url`` answers 2xx."""

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1.0).is_success
        except httpx.HTTPError:
            return False

    wait_until(proc, answers, timeout, f"answer {url}")


def wait_log_line(proc: Process, text: str, timeout: float = 60.0) -> None:
    """Until ``proc``'s log contains ``text``."""
    wait_until(proc, lambda: text in proc.log.read_text(errors="replace"), timeout, f"log {text!r}")


def wait_port(proc: Process, port: int, timeout: float = 20.0) -> None:
    """Until ``port`` accepts a TCP connection."""

    def accepts() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return True
        except OSError:
            return False

    wait_until(proc, accepts, timeout, f"accept connections on port {port}")


# --- the stack --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackOptions:
    workers: int
    access_log: bool
    cache: bool
    echo_backend: bool  # development fallback: tests/support/echo_upstream.py workers
    nginx: str  # path of the nginx binary
    # Processes of each proxy: nginx worker_processes and the gateway's [gateway] workers.
    proxy_workers: int = 1


class Stack:
    """Backend workers, the static upstream, the gateway and nginx, all on free ports."""

    def __init__(self, tmp: Path, options: StackOptions) -> None:
        self.tmp = tmp
        self.options = options
        self.ports = Ports.allocate(options.workers)
        self.certs = tmp / "certs"
        self.config = tmp / "config.toml"
        self.processes: list[Process] = []
        self.backend: list[Process] = []
        self.static: Process | None = None
        self.ws: Process | None = None
        self.gateway: Process | None = None
        self.nginx: Process | None = None

    @property
    def ca_file(self) -> Path:
        return self.certs / "ca.pem"

    def _add(self, proc: Process) -> Process:
        self.processes.append(proc)
        proc.start()
        return proc

    def start(self) -> None:
        py = sys.executable
        static_file = self.tmp / "www" / STATIC_FILE.lstrip("/")
        static_file.parent.mkdir(parents=True)
        static_file.write_bytes(os.urandom(STATIC_FILE_SIZE))
        self.config.write_text(self.gateway_config())
        logs = self.tmp / "logs"
        logs.mkdir()
        ports = self.ports
        self.static = self._add(
            Process(
                "static upstream",
                [py, str(REPO / "tests/support/echo_upstream.py"), "--port", str(ports.static)],
                logs / "static.log",
            )
        )
        self.ws = self._add(
            Process(
                "websocket upstream",
                [py, str(REPO / "tests/support/ws_upstream.py"), "--port", str(ports.ws)],
                logs / "ws.log",
            )
        )
        if self.options.echo_backend:
            echo = str(REPO / "tests/support/echo_upstream.py")
            for i, port in enumerate(ports.backend):
                env = {**os.environ, "ECHO_NAME": f"w{i}"}
                argv = [py, echo, "--port", str(port)]
                self.backend.append(
                    self._add(Process(f"echo {i}", argv, logs / f"echo{i}.log", env))
                )
        else:
            # A throwaway secret: otherwise the backend generates one and keeps it on disk.
            env = {**os.environ, "BACKEND_JWT_SECRET": secrets.token_hex(32)}
            argv = [py, str(REPO / "run_backend.py"), "--config", str(self.config)]
            self.backend.append(self._add(Process("backend", argv, logs / "backend.log", env)))
        self.gateway = self._add(
            Process(
                "gateway",
                [py, str(REPO / "run_gateway.py"), "--config", str(self.config)],
                logs / "gateway.log",
            )
        )

        for i, port in enumerate(ports.backend):
            proc = self.backend[min(i, len(self.backend) - 1)]
            wait_http_ok(proc, f"http://127.0.0.1:{port}/health")
        wait_http_ok(self.static, f"http://127.0.0.1:{ports.static}/health")
        wait_http_ok(self.ws, f"http://127.0.0.1:{ports.ws}/health")
        wait_log_line(self.gateway, "gateway ready")

        # nginx serves the very certificate the gateway just made.
        nginx_conf = self.tmp / "nginx.conf"
        nginx_conf.write_text(self.nginx_config())
        for sub in ("nginx-temp", "nginx-cache"):
            (self.tmp / sub).mkdir()
        nginx = self.options.nginx
        base = [
            nginx,
            "-p",
            str(self.tmp),
            "-c",
            str(nginx_conf),
            "-e",
            str(logs / "nginx-error.log"),
        ]
        check = subprocess.run(
            [*base, "-t"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
        )
        if check.returncode != 0:
            raise StackError(f"nginx -t rejected {nginx_conf}:\n{check.stderr}")
        self.nginx = self._add(Process("nginx", base, logs / "nginx.log"))
        wait_port(self.nginx, ports.nginx)

    def stop(self) -> None:
        # Reverse start order: nginx first (it must never be left behind), then the gateway
        # before its upstreams so its health checks do not log a burst of failures.
        for proc in reversed(self.processes):
            proc.stop(grace=10.0)

    # --- config files -----------------------------------------------------------------------

    def gateway_config(self) -> str:
        p = self.ports
        backend = ", ".join(json.dumps(f"http://127.0.0.1:{port}") for port in p.backend)
        routes = "".join(
            f'\n[[routes]]\npath_prefix = "{path}"\nupstream = "static"\n'
            + ("" if path == "/blob64k" else "cache = false\n")
            # The 1 GiB upload streams through, as Nginx's proxy_request_buffering off would.
            + ("request_buffering = false\n" if path == "/upload" else "")
            for path in STATIC_PATHS
        )
        return f"""# Written by bench/run.py: the stack under test, on free ports.
[gateway]
host = "127.0.0.1"
http_port = {p.http}
https_port = {p.https}
hostnames = ["localhost"]
# The 1 GiB upload must not hit the default 10 MiB limit.
max_body_bytes = {1 << 40}
access_log = {json.dumps(self.options.access_log)}
graceful_timeout = 2.0
workers = {self.options.proxy_workers}
# nginx.conf gets the same: no per-connection request cap on either side.  With the default
# (1000), hey's Go client answers each closed connection with a storm of dials it abandons
# after the ClientHello, each costing the proxy a TLS handshake.
keepalive_requests = 1000000

[tls]
dir = "certs"

[backend]
host = "127.0.0.1"
base_port = {p.backend_base}
workers = {p.workers}
database = "var/backend.db"
outbox = "var/outbox"
graceful_timeout = 2.0

[upstreams.backend]
servers = [{backend}]
health_path = "/health"

[upstreams.static]
servers = ["http://127.0.0.1:{p.static}"]
health_path = "/health"

[upstreams.ws]
servers = ["http://127.0.0.1:{p.ws}"]
health_path = "/health"

[[routes]]
path_prefix = "/"
upstream = "backend"
{routes}
[[routes]]
path_prefix = "{COMPRESS_PREFIX}"
upstream = "static"
strip_prefix = true
cache = false
middlewares = ["gzip"]

[[routes]]
path_prefix = "{COMPRESS_CACHED_PREFIX}"
upstream = "static"
strip_prefix = true
middlewares = ["gzip"]

[middlewares.gzip]
type = "compress"

[[routes]]
path_prefix = "{STATIC_FILE.rsplit("/", 1)[0]}"
static = "www"

[[routes]]
path_prefix = "/ws"
upstream = "ws"
cache = false

[cache]
enabled = {json.dumps(self.options.cache)}
"""

    def nginx_config(self) -> str:
        p = self.ports
        if self.options.access_log:
            access_log = f"access_log {self.tmp}/logs/nginx-access.log combined;"
        else:
            access_log = "access_log off;"
        fields = {
            # As root, nginx would switch its workers to "nobody", who cannot write our temp
            # dir; outside root the directive would only draw a warning.
            "user": "user root;" if os.geteuid() == 0 else "",
            "dir": str(self.tmp),
            "access_log": access_log,
            "backend_servers": "\n".join(f"        server 127.0.0.1:{port};" for port in p.backend),
            "static_port": str(p.static),
            "ws_port": str(p.ws),
            "port": str(p.nginx),
            "h2_port": str(p.nginx_h2),
            "cert_file": str(self.certs / "cert.pem"),
            "key_file": str(self.certs / "key.pem"),
            "ciphers": INTERMEDIATE_CIPHERS,
            "worker_processes": str(self.options.proxy_workers),
        }
        text = NGINX_TEMPLATE.read_text()
        for name, value in fields.items():
            text = text.replace("{{" + name + "}}", value)
        return text


def find_tool(name: str) -> str | None:
    # nginx lives in /usr/sbin, which is not on every user's PATH.
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path)
