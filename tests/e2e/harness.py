"""Start the real gateway and echo upstreams as subprocesses on free loopback ports.

A ``Stack`` is one gateway process plus the echo upstreams it forwards to, described by a
config file written to a temporary directory.  Everything started here is stopped again
(SIGTERM, a bounded wait, then SIGKILL) by the context managers, whatever happens in between.

Echo upstreams inherit an already listening socket (``--fd``), so their ports are known before
they start and cannot be taken by another process meanwhile.  The gateway binds its own ports
from the config, so a clash with another process is possible: the start is retried on new ports
when the gateway reports "address already in use".
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
ECHO_UPSTREAM = REPO / "tests" / "support" / "echo_upstream.py"
READY_LINE = "gateway ready"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
# Far from the ephemeral range the free ports come from, so the config check never sees the
# gateway's ports clash with the backend workers' ports.
BACKEND_BASE_PORT = 1
# max_body_bytes of the session-wide stack (see conftest.shared_config).
SHARED_MAX_BODY = 1024 * 1024

TomlValue = str | int | float | bool | Sequence[Any] | Mapping[str, Any]


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on right now (the kernel's choice for a bind to port 0), and
    one this test process has not handed out before: the kernel can give a port it just
    released to the next bind, so two calls in a row could name the same port (CI once got
    an upstream on the gateway's own listener that way)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


class ManagedProcess:
    """A subprocess whose merged stdout/stderr is collected line by line by a reader thread."""

    def __init__(
        self, args: Sequence[str], *, env: Mapping[str, str] | None = None, **kw: Any
    ) -> None:
        self.args = list(args)
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=REPO,
            text=True,
            errors="replace",
            **kw,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                self._queue.put(line)
        self._queue.put(None)  # end of output: the process has exited (or closed its streams)

    def wait_for_line(self, text: str, timeout: float) -> str | None:
        """The first new output line containing ``text``; None if the output ends or time is up."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if line is None:
                self._queue.put(None)  # keep the end marker for later waits
                return None
            if text in line:
                return line

    def output(self) -> str:
        return "\n".join(self.lines)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL: the process is gone afterwards."""
        try:
            self.signal(signal.SIGTERM)
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.wait(timeout)
            return None


@dataclass
class EchoUpstream:
    name: str
    port: int
    process: ManagedProcess
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        """The upstream's own counters (requests in flight, paths seen), asked directly."""
        with httpx.Client(trust_env=False, timeout=5) as client:
            payload: dict[str, Any] = client.get(f"{self.url}/_stats").json()
            return payload

    def answered(self, path: str) -> int:
        """How many ``path`` requests the cache-family endpoints really answered."""
        with httpx.Client(trust_env=False, timeout=5) as direct:
            counts: dict[str, int] = direct.get(f"{self.url}/cache-count").json()["paths"]
        return counts.get(path, 0)

    def seen(self, path: str) -> int:
        return int(self.stats()["seen"].get(path, 0))


@contextlib.contextmanager
def echo_upstream(
    name: str,
    *,
    keep_alive: float | None = None,
    tls: tuple[Path, Path, Path] | None = None,
) -> Iterator[EchoUpstream]:
    """An echo upstream serving a socket bound here; ready once it answered GET /health.
    ``tls`` (certificate, key, CA) makes it an HTTPS upstream."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    args = [PYTHON, str(ECHO_UPSTREAM), "--fd", str(sock.fileno())]
    if keep_alive is not None:
        args += ["--keep-alive", str(keep_alive)]
    if tls is not None:
        args += ["--certfile", str(tls[0]), "--keyfile", str(tls[1])]
    try:
        process = ManagedProcess(args, env={"ECHO_NAME": name}, pass_fds=[sock.fileno()])
    finally:
        sock.close()  # the child holds its own copy
    try:
        upstream = EchoUpstream(name, port, process, "https" if tls else "http")
        # The socket already listens, so this request simply waits until the child serves it.
        verify: ssl.SSLContext | bool = True
        if tls is not None:
            verify = ssl.create_default_context(cafile=str(tls[2]))
        try:
            with httpx.Client(trust_env=False, timeout=START_TIMEOUT, verify=verify) as client:
                client.get(f"{upstream.url}/health").raise_for_status()
        except httpx.HTTPError as exc:
            raise AssertionError(
                f"echo upstream {name} did not start: {exc}\n{process.output()}"
            ) from exc
        yield upstream
    finally:
        process.stop()


def toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Mapping):  # an inline table
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def toml_table(header: str, values: Mapping[str, TomlValue]) -> str:
    lines = [header] + [f"{key} = {toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


@dataclass
class StackConfig:
    """What a test wants from its gateway: pools of servers, routes, extra settings.

    ``pools`` maps an upstream name to its server URLs; ``pool_options`` adds per-pool keys.
    """

    pools: dict[str, list[str]]
    routes: list[dict[str, TomlValue]]
    gateway: dict[str, TomlValue] = field(default_factory=dict)
    pool_options: dict[str, dict[str, TomlValue]] = field(default_factory=dict)
    cache: dict[str, TomlValue] = field(default_factory=dict)
    # [middlewares.NAME] tables, by NAME
    middlewares: dict[str, dict[str, TomlValue]] = field(default_factory=dict)
    admin: dict[str, TomlValue] = field(default_factory=dict)  # [admin], when given

    def render(self, directory: Path, http_port: int, https_port: int) -> str:
        gateway: dict[str, TomlValue] = {
            "host": "127.0.0.1",
            "http_port": http_port,
            "https_port": https_port,
            "hostnames": ["localhost"],
            # Tests that start with a dead upstream should not wait long for its first check.
            "ready_timeout": 2.0,
            **self.gateway,
        }
        parts = [
            toml_table("[gateway]", gateway),
            toml_table("[tls]", {"dir": str(directory / "certs")}),
            toml_table("[backend]", {"base_port": BACKEND_BASE_PORT, "workers": 1}),
        ]
        for name, servers in self.pools.items():
            values: dict[str, TomlValue] = {"servers": servers, **self.pool_options.get(name, {})}
            parts.append(toml_table(f"[upstreams.{name}]", values))
        for route in self.routes:
            parts.append(toml_table("[[routes]]", route))
        if self.cache:
            parts.append(toml_table("[cache]", self.cache))
        for name, values in self.middlewares.items():
            parts.append(toml_table(f"[middlewares.{name}]", values))
        if self.admin:
            parts.append(toml_table("[admin]", self.admin))
        return "\n".join(parts)


def one_pool(
    *,
    path_prefix: str = "/",
    gateway: Mapping[str, TomlValue] | None = None,
    pool: Mapping[str, TomlValue] | None = None,
    cache: Mapping[str, TomlValue] | None = None,
) -> Any:
    """The usual test topology, as a ``build`` for ``stack``: every upstream started in one
    pool named ``pool``, one route to it, plus per-test gateway/pool/cache keys."""

    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        return StackConfig(
            pools={"pool": [upstream.url for upstream in upstreams.values()]},
            routes=[{"path_prefix": path_prefix, "upstream": "pool"}],
            gateway=dict(gateway or {}),
            pool_options={"pool": dict(pool or {})},
            cache=dict(cache or {}),
        )

    return build


@dataclass
class Gateway:
    directory: Path
    config_path: Path
    http_port: int
    https_port: int
    process: ManagedProcess

    @property
    def ca_pem(self) -> Path:
        return self.directory / "certs" / "ca.pem"

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.https_port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_pem))

    def client(self, **kw: Any) -> httpx.Client:
        """An HTTPS client that trusts only the gateway's CA (the caller closes it)."""
        kw.setdefault("timeout", 10.0)
        return httpx.Client(
            verify=self.ssl_context(), base_url=self.base_url, trust_env=False, **kw
        )

    def tls_socket(self, *, timeout: float = 5.0) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.https_port), timeout=timeout)
        try:
            return self.ssl_context().wrap_socket(raw, server_hostname="localhost")
        except BaseException:
            raw.close()
            raise

    def log_lines(self, text: str) -> list[str]:
        return [line for line in self.process.lines if text in line]

    def wait_for_log_lines(self, count: int, *texts: str, timeout: float = 5.0) -> list[str]:
        """The log lines containing every one of ``texts`` once there are ``count`` of them
        (or what there is when time is up): a line is read by a thread, after the response."""
        deadline = time.monotonic() + timeout

        def found() -> list[str]:
            return [line for line in self.process.lines if all(t in line for t in texts)]

        while len(found()) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.wait_for_line(texts[0], remaining) is None:
                break
        return found()

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        """The first log line containing ``text`` (already written, or written within timeout)."""
        for line in self.process.lines:
            if text in line:
                return line
        found = self.process.wait_for_line(text, timeout)
        assert found is not None, f"no log line with {text!r}:\n{self.process.output()}"
        return found


@contextlib.contextmanager
def gateway(directory: Path, config: StackConfig, attempts: int = 3) -> Iterator[Gateway]:
    """The gateway running ``config`` from ``directory``; stopped on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "config.toml"
    for attempt in range(attempts):
        http_port, https_port = free_port(), free_port()
        if http_port == https_port:
            continue
        config_path.write_text(config.render(directory, http_port, https_port))
        process = ManagedProcess([PYTHON, "run_gateway.py", "--config", str(config_path)])
        try:
            if process.wait_for_line(READY_LINE, START_TIMEOUT) is None:
                output = process.output()
                if "address already in use" in output and attempt + 1 < attempts:
                    continue  # another process took a port meanwhile: try fresh ones
                raise AssertionError(f"the gateway did not become ready:\n{output}")
            yield Gateway(directory, config_path, http_port, https_port, process)
            return
        finally:
            process.stop()
    raise AssertionError("no free port pair for the gateway")


@dataclass
class Stack:
    gateway: Gateway
    upstreams: dict[str, EchoUpstream]


@contextlib.contextmanager
def stack(
    directory: Path,
    upstream_names: Sequence[str],
    build: Callable[[dict[str, EchoUpstream]], StackConfig],
    *,
    keep_alive: float | None = None,
) -> Iterator[Stack]:
    """Echo upstreams named ``upstream_names`` plus a gateway configured by
    ``build(upstreams) -> StackConfig``."""
    with contextlib.ExitStack() as stack_:
        upstreams = {
            name: stack_.enter_context(echo_upstream(name, keep_alive=keep_alive))
            for name in upstream_names
        }
        gw = stack_.enter_context(gateway(directory, build(upstreams)))
        yield Stack(gw, upstreams)


@contextlib.contextmanager
def two_gateways(
    directory: Path, build: Callable[[str], StackConfig]
) -> Iterator[tuple[Gateway, Gateway, EchoUpstream]]:
    """Two gateways (two machines behind one load balancer, sharing a Redis, say) in front of
    one echo upstream ``a``, each configured by ``build(upstream_url)``."""
    with stack(directory / "one", ["a"], lambda upstreams: build(upstreams["a"].url)) as s:
        upstream = s.upstreams["a"]
        with gateway(directory / "two", build(upstream.url)) as other:
            yield s.gateway, other, upstream


# Bytes read past the end of a response, kept for the next ``read_response`` on the socket: the
# gateway writes what it has for a connection at once (``gateway.corking``), so a pipelined
# response or a 400 after a good one can arrive in the same TLS record as the one before.
_surplus: weakref.WeakKeyDictionary[ssl.SSLSocket | socket.socket, bytes] = (
    weakref.WeakKeyDictionary()
)


def read_response(
    sock: ssl.SSLSocket | socket.socket, *, head_only: bool = False
) -> tuple[int, dict[str, list[str]], bytes]:
    """Read one HTTP/1.1 response framed by Content-Length (what the gateway's own errors
    and the echo upstream use): status, headers (lowercase names), body.  ``head_only``: the
    answer to a HEAD, whose Content-Length describes a body that is not sent.  Bytes after the
    response are kept for the next call on the same socket."""
    data = _surplus.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a complete response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers: dict[str, list[str]] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    length = 0 if head_only else int(headers.get("content-length", ["0"])[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    if len(body) > length:
        body, _surplus[sock] = body[:length], body[length:]
    return status, headers, body


def sigterm_while_held(s: Stack, upstream: EchoUpstream, futures: list[Future[Any]]) -> list[Any]:
    """Graceful shutdown with requests in flight: once every one of ``futures`` (GETs of the
    echo upstream's ``/hold``) reached ``upstream``, SIGTERM the gateway; once uvicorn's
    shutdown has begun (the listener refuses connections: only then are the requests really
    in flight during it), let the upstream answer.  The responses, in order."""
    deadline = time.monotonic() + 15
    while upstream.stats()["inflight"] < len(futures):
        assert time.monotonic() < deadline, "the requests never all reached the upstream"
        assert not any(f.done() for f in futures), [f.result() for f in futures if f.done()]
        time.sleep(0.02)
    s.gateway.process.signal(signal.SIGTERM)
    s.gateway.wait_for_log("shutting down")
    while not refuses_connections(s.gateway.https_port):
        assert time.monotonic() < deadline, "the listener never closed"
        time.sleep(0.02)
    with httpx.Client(trust_env=False, timeout=5) as direct:
        direct.post(f"{upstream.url}/hold/release").raise_for_status()
    return [future.result(timeout=15) for future in futures]


def refuses_connections(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (any more): a gateway's shutdown has begun."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def is_closed(sock: ssl.SSLSocket | socket.socket) -> bool:
    """True when the peer has closed the connection (EOF or reset) within the socket timeout;
    False if bytes beyond the responses read so far came first."""
    if _surplus.get(sock):
        return False
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def vm_rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes, from /proc (psutil is not installed)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples a process's RSS on a thread until stopped; ``peak`` is the largest value seen."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = vm_rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, vm_rss(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, vm_rss(self.pid))


class KeepAliveRaceUpstream:
    """A raw HTTP/1.1 server that makes the keep-alive race deterministic: on each connection
    it answers the first request (keeping the connection open), then closes the connection
    as soon as a second request arrives on it, without answering, just as a server whose
    idle timer fires at that moment does.  GET requests only (no bodies)."""

    RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

    def __init__(self) -> None:
        self._listener = listening_socket()
        self.port: int = self._listener.getsockname()[1]
        self.answered = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> KeepAliveRaceUpstream:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # shutdown() wakes the blocked accept()/recv() calls; then every thread ends.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(5)
        self._listener.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._conns.append(conn)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            buffer = b""
            answered = False
            while True:
                try:
                    while b"\r\n\r\n" not in buffer:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buffer += data
                except OSError:
                    return
                _, _, buffer = buffer.partition(b"\r\n\r\n")
                with self._lock:
                    if answered:
                        self.dropped += 1
                        return  # close with the request unanswered
                    self.answered += 1
                answered = True
                try:
                    conn.sendall(self.RESPONSE)
                except OSError:
                    return


class Admin:
    """An HTTPS client of a stack's admin listener (``[admin] port``), trusting its CA."""

    def __init__(self, s: Stack, port: int) -> None:
        self.stack = s
        self.port = port
        self.client = httpx.Client(
            base_url=f"https://127.0.0.1:{port}",
            verify=s.gateway.ssl_context(),
            trust_env=False,
            timeout=30,
        )

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def get(self, path: str) -> Any:
        response = self.client.get(path)
        assert response.status_code == 200, response.text
        return response.json()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = self.client.get("/metrics")
        assert response.status_code == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }

    def wait_for(self, check: Any, timeout: float = 15.0) -> Any:
        """Poll the admin API until ``check()`` is truthy (state the gateway reaches by
        itself: health checks, worker start-up)."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            assert time.monotonic() < deadline, "the admin API never showed it"
            time.sleep(0.1)
