"""``start_gateway`` and the ``RunningGateway`` it returns (see the package docstring)."""

from __future__ import annotations

import atexit
import socket
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from gateway.testing.app_server import AppServer, ASGIApp
from gateway.testing.errors import GatewayStartError
from gateway.testing.processes import GatewayProcess
from gateway.testing.tables import HEALTH_PATH, default_tables, merge_tables, toml_ready

BUSY_PORT = "already in use"
START_TIMEOUT = 30.0
START_ATTEMPTS = 5


def free_port() -> int:
    """A loopback port nothing listens on right now (the kernel's choice for port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    config = toml_ready(config or {})
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
