"""A real gateway process in front of the app under test: what the ``pygateway`` fixture returns.

Theory of operation.  ``start_gateway`` writes a config file (the caller's tables merged over
defaults: loopback ports, a private CA in the gateway's own directory, the host ``localhost``)
and starts ``python -m gateway run --config FILE`` exactly as a user would.  An in-process ASGI
app is served by uvicorn on a thread of the calling process, on a socket bound here before the
thread starts, so its port is known and held from the start.

Readiness is an event, not a poll: a reader thread consumes the gateway's output and wakes the
caller on the "gateway ready" line, or when the output ends because the process exited; the
caller then raises with that output.  The gateway binds its own ports, so a port picked free here
can be taken by another process (another pytest-xdist worker) before the gateway binds it; the
gateway then exits at once with "... already in use" and the start is retried on fresh ports.

Every gateway runs in its own process group (its worker processes included) and is stopped by
SIGTERM to the group, a bounded wait, then SIGKILL: by ``stop()``, by the fixture's teardown
(which also runs when the test fails or pytest is interrupted), and by an ``atexit`` hook; a
watchdog process in the group does the same when the test process dies without any of those.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import tomli_w
import uvicorn

from gateway.asgi import Receive, Scope, Send

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

READY_LINE = "gateway ready"
BUSY_PORT = "already in use"
START_TIMEOUT = 30.0
# Above the gateway's default graceful_timeout (10 s): a stop is graceful whenever it can be.
STOP_TIMEOUT = 15.0
START_ATTEMPTS = 5
# The gateway's active health checks of an in-process app are answered here, so the app under
# test never sees requests it did not expect.
HEALTH_PATH = "/_pygateway/health"
# Any answer proves a server is there; a test that expects a 500 from "/" must not see its
# upstream taken out of rotation (and 503s) because of it.
ANY_STATUS = list(range(100, 600))
UPSTREAM_NAME = "app"


class GatewayStartError(Exception):
    """The gateway (or the in-process app) did not become ready; the message has its output."""


def merge_tables(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: tables merge key by key, any other value (arrays such as
    ``routes`` included) replaces the base's."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_tables(merged[key], value)
        else:
            merged[key] = value
    return merged


def _toml_ready(value: Any) -> Any:
    """Paths become strings, tuples lists: what a user naturally writes in a dict, as TOML."""
    if isinstance(value, Mapping):
        return {str(k): _toml_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_toml_ready(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def default_tables(
    directory: Path, https_port: int, http_port: int, upstream: str | None, health_path: str
) -> dict[str, Any]:
    """The config the fixture writes when the caller adds nothing."""
    tables: dict[str, Any] = {
        "gateway": {
            "host": "127.0.0.1",
            "https_port": https_port,
            "http_port": http_port,
            "hostnames": ["localhost"],
        },
        "tls": {"dir": str(directory / "certs")},
        # A test sees its app's own responses, not stored ones, unless it turns the cache on.
        "cache": {"enabled": False},
    }
    if upstream is not None:
        tables["upstreams"] = {
            UPSTREAM_NAME: {
                "servers": [upstream],
                "health_path": health_path,
                "health_status": ANY_STATUS,
            }
        }
        tables["routes"] = [{"path_prefix": "/", "upstream": UPSTREAM_NAME}]
    return tables


def free_port() -> int:
    """A loopback port nothing listens on right now (the kernel's choice for port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answering_health_checks(app: ASGIApp) -> ASGIApp:
    """``app``, except that ``HEALTH_PATH`` answers 204 without reaching it."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == HEALTH_PATH:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)

    return wrapped


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that says when its start-up is over (serving, or failed)."""

    def __init__(self, config: uvicorn.Config, settled: threading.Event) -> None:
        super().__init__(config)
        self._settled = settled

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._settled.set()


class AppServer:
    """An ASGI app served by uvicorn on a thread, on a loopback socket bound beforehand."""

    def __init__(self, app: ASGIApp) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            answering_health_checks(app),
            log_config=None,  # leave the test process's logging as the user set it up
            access_log=False,
            timeout_graceful_shutdown=5,  # the gateway in front is already gone by then
        )
        self._settled = threading.Event()
        self._server = _ThreadServer(config, self._settled)
        self._error: BaseException | None = None
        # A daemon: an app whose start-up hangs must not keep the test process alive.
        self._thread = threading.Thread(
            target=self._run, name=f"pygateway-app:{self.port}", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        try:
            # asyncio.run, not Server.run: older uvicorn versions set a process-wide event loop
            # policy there, which would change the loop of the user's own async tests.
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # uvicorn calls sys.exit() when the app's startup fails
            self._error = exc
        finally:
            self._settled.set()

    def start(self, timeout: float) -> None:
        self._thread.start()
        self._settled.wait(timeout)
        if not self._server.started:
            self.stop()
            why = f" ({self._error!r})" if self._error is not None else ""
            raise GatewayStartError(
                f"the ASGI app did not start within {timeout:g}s{why}: its lifespan startup "
                "failed or hangs (uvicorn's error is in the captured log)"
            )

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT)
        self._sock.close()


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of group ``pgid``, from /proc (empty where there is
    no /proc: nothing to wait for there)."""
    members = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                stat = Path("/proc", name, "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            # After the command name, which may itself hold ")": state, ppid, pgrp, ...
            state, _, pgrp = stat.rpartition(")")[2].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                members.append(int(name))
    return members


def wait_exited(pids: list[int], timeout: float) -> None:
    """Wait (bounded) until each of ``pids`` has exited; they need not be our children."""
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            continue  # already gone, or no pidfds on this system
        try:
            select.select([fd], [], [], timeout)
        finally:
            os.close(fd)


# Run beside each gateway, in its process group, holding the read end of a pipe whose write end
# only the test process has.  When that process dies without stopping its gateways (SIGKILL, a
# CI timeout, os._exit) the pipe reports EOF and the watchdog stops the group: SIGTERM for a
# graceful stop, then SIGKILL.  It ignores SIGTERM itself, so it outlives the gateway's stop and
# finally takes itself down with the group's SIGKILL.
WATCHDOG = f"""
import os, select, signal, sys, time
pgid = int(sys.argv[1])
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.stdin.buffer.read()
try:
    os.killpg(pgid, signal.SIGTERM)
    if hasattr(os, "pidfd_open"):
        select.select([os.pidfd_open(pgid)], [], [], {STOP_TIMEOUT})
    else:
        deadline = time.monotonic() + {STOP_TIMEOUT}
        while time.monotonic() < deadline:
            os.kill(pgid, 0)
            time.sleep(0.1)
except OSError:
    pass
os.killpg(pgid, signal.SIGKILL)
"""


class GatewayProcess:
    """``python -m gateway run --config FILE`` in its own process group; its output (stdout
    and stderr merged) is kept in memory and in ``log_file``."""

    def __init__(self, config_file: Path, log_file: Path) -> None:
        self.log_file = log_file
        self.lines: list[str] = []
        self.ready = False
        self.ended = False
        self._settled = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=config_file.parent,
            process_group=0,  # its own group: one signal reaches its workers too
            text=True,
            errors="replace",
        )
        # Joins the gateway's group, so the group's stop signals end it too.
        self.watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", WATCHDOG, str(self.proc.pid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=self.proc.pid,
        )
        self._reader = threading.Thread(
            target=self._read, name=f"pygateway-log:{self.proc.pid}", daemon=True
        )
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout, self.log_file.open("a", encoding="utf-8") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self.lines.append(line.rstrip("\n"))
                if not self.ready and READY_LINE in line:
                    self.ready = True
                    self._settled.set()
        self.ended = True  # end of output: the process is exiting
        self._settled.set()

    def wait_ready(self, timeout: float) -> bool:
        self._settled.wait(timeout)
        return self.ready

    def output(self) -> str:
        return "\n".join(self.lines)

    def exit_code(self) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.proc.wait(STOP_TIMEOUT)
        return None

    def stop(self) -> int | None:
        """SIGTERM to the group, a bounded wait, then SIGKILL; nothing of it runs afterwards."""
        pgid = self.proc.pid
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        # Whatever is left of the group (a worker that outlived its parent) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        if code is None:
            self.proc.wait()
        wait_exited(group_members(pgid), STOP_TIMEOUT)  # SIGKILL is sent, not yet done
        self.watchdog.wait()  # killed with the group above
        if self.watchdog.stdin is not None:
            self.watchdog.stdin.close()
        self._reader.join(STOP_TIMEOUT)
        return code


_running: set[RunningGateway] = set()
_running_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    """Last resort when a fixture's teardown never ran (e.g. a ``start_gateway`` caller that
    did not stop its gateway)."""
    with _running_lock:
        gateways = list(_running)
    for gateway in gateways:
        gateway.stop()


class RunningGateway:
    """One started gateway (and its in-process app, if any)."""

    def __init__(
        self,
        directory: Path,
        config_file: Path,
        tables: dict[str, Any],
        process: GatewayProcess,
        app_server: AppServer | None,
    ) -> None:
        self.directory = directory
        self.config_file = config_file
        self.config = tables
        self.process = process
        self.app_server = app_server
        g = tables["gateway"]
        self.https_port: int = g["https_port"]
        self.http_port: int = g["http_port"]
        names = list(g.get("hostnames", ["localhost"]))
        self.host: str = "localhost" if "localhost" in names else names[0]
        self.ca_file = str(Path(tables["tls"]["dir"]) / "ca.pem")
        self._stopped = False

    def __repr__(self) -> str:
        return f"<RunningGateway {self.url} pid={self.process.proc.pid}>"

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.https_port}"

    @property
    def http_url(self) -> str:
        """The plain-HTTP listener: it answers every request with a redirect to ``url``."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def output(self) -> str:
        """Everything the gateway wrote so far (its log and access log)."""
        return self.process.output()

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this gateway's CA and nothing else."""
        return ssl.create_default_context(cafile=self.ca_file)

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client for ``url`` that verifies the certificate against ``ca_file``."""
        kwargs.setdefault("base_url", self.url)
        kwargs.setdefault("verify", self.ssl_context())
        kwargs.setdefault("trust_env", False)  # no proxy or SSL_CERT_FILE from the environment
        return httpx.Client(**kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("base_url", self.url)
        kwargs.setdefault("verify", self.ssl_context())
        kwargs.setdefault("trust_env", False)
        return httpx.AsyncClient(**kwargs)

    def stop(self) -> None:
        """Stop the gateway, then the app; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.process.stop()
        finally:
            if self.app_server is not None:
                self.app_server.stop()
            with _running_lock:
                _running.discard(self)

    def __enter__(self) -> RunningGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_gateway(
    directory: Path,
    app: ASGIApp | None = None,
    *,
    upstream: str | None = None,
    config: Mapping[str, Any] | None = None,
    start_timeout: float = START_TIMEOUT,
) -> RunningGateway:
    """A gateway whose files (config, CA, log) live in ``directory``, ready to serve.

    ``app`` (an ASGI app, served on a thread here) or ``upstream`` (the URL of a running
    server) becomes the pool ``app`` routed at ``/``; ``config`` holds config.toml tables as a
    dict, merged over the defaults.  With neither, ``config`` must name its own upstreams.
    """
    if app is not None and upstream is not None:
        raise TypeError("pygateway: give app= or upstream=, not both")
    config = _toml_ready(config or {})
    pinned = {key for key in ("https_port", "http_port") if key in config.get("gateway", {})}
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "config.toml"
    app_server = AppServer(app) if app is not None else None
    try:
        if app_server is not None:
            app_server.start(start_timeout)
            upstream = app_server.url
        health_path = HEALTH_PATH if app_server is not None else "/"
        for attempt in range(1, START_ATTEMPTS + 1):
            https_port, http_port = free_port(), free_port()
            if https_port == http_port:
                continue
            tables = merge_tables(
                default_tables(directory, https_port, http_port, upstream, health_path), config
            )
            config_file.write_text(tomli_w.dumps(tables), encoding="utf-8")
            process = GatewayProcess(config_file, directory / "gateway.log")
            gateway = RunningGateway(directory, config_file, tables, process, app_server)
            with _running_lock:
                _running.add(gateway)
            try:
                ready = process.wait_ready(start_timeout)
            except BaseException:  # interrupted while waiting: leave nothing behind
                gateway.stop()
                raise
            if ready:
                return gateway
            code = process.exit_code() if process.ended else None  # None: still starting
            gateway.app_server = None  # kept for the next attempt
            gateway.stop()
            busy = BUSY_PORT in process.output()
            if busy and not pinned and attempt < START_ATTEMPTS:
                continue  # another process took a port meanwhile: try fresh ones
            how = (
                f"exited with code {code}"
                if code is not None
                else f"was not ready within {start_timeout:g}s"
            )
            raise GatewayStartError(
                f"the gateway {how} (config: {config_file}); its output:\n{process.output()}"
            )
        raise GatewayStartError("no two free ports for the gateway")
    except BaseException:
        if app_server is not None:
            app_server.stop()
        raise
