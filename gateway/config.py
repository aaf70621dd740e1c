"""Typed, immutable settings read from ``config.toml``.

Every table of the file is described by a frozen dataclass below.  Loading never stops at the
first problem: each bad key is collected as one line that names the file, the key, the value and
what is allowed, and they are raised together as :class:`ConfigError` (``run_gateway.py --check``
prints them all, like ``nginx -t``).  Relative paths are resolved against the config file's
directory, so a config works the same from any working directory.
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback_name(name: str) -> bool:
    """``localhost``, every ``*.localhost`` name (RFC 6761 §6.3) and the loopback IPs."""
    return name in LOOPBACK_NAMES or name.endswith(".localhost")


class ConfigError(Exception):
    """The config file is unusable; ``errors`` holds one readable line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    http_port: int = 8080
    https_port: int = 8443
    hostnames: tuple[str, ...] = ("localhost",)
    redirect_status: int = 308
    max_body_bytes: int = 10 * 1024 * 1024
    # Request line plus headers; larger heads get 431 (Nginx: large_client_header_buffers).
    max_header_bytes: int = 64 * 1024
    # True: stdout; a Path: that file (gateway/access_log.py: formats, rotation, SIGUSR1).
    access_log: bool | Path = True
    access_log_format: str = "text"  # "text", "combined" or "json"
    access_log_max_bytes: int = 20 * 1024 * 1024  # rotate the file past this size
    access_log_keep_days: float = 7.0  # delete rotated files older than this
    # None means "auto": off when every hostname is a loopback name (see ``hsts_header``).
    hsts_max_age: int | None = None
    # Client addresses (CIDRs) whose X-Forwarded-For we extend instead of replacing.
    trusted_proxies: tuple[str, ...] = ()
    keepalive_timeout: float = 15.0
    graceful_timeout: float = 10.0
    # Processes sharing the listeners (Nginx's worker_processes) and, by default, one cache.
    workers: int = 1
    # A WebSocket tunnel with no byte in either direction for this long is closed (Nginx
    # closes after proxy_read_timeout, 60 s, which surprises every dev server; 5 minutes here).
    websocket_idle_timeout: float = 300.0
    # Open tunnels per gateway process; beyond it an upgrade gets 503.
    max_websocket_tunnels: int = 4096
    # Offer h2 by ALPN on https_port (gateway/http2/); HTTP/1.1 stays available either way.
    http2: bool = True
    # At start-up, how long to wait for each upstream's first passing health check before
    # announcing "ready" anyway; requests arriving meanwhile are held (not answered 502/503).
    ready_timeout: float = 10.0
    # Server-Timing on every response (total, upstream, cache), for browsers' devtools.
    server_timing: bool = False
    # One block per request on stderr following it through the gateway's stages (tracing.py).
    trace: bool = False
    # Slow clients (Nginx's client_header_timeout / client_body_timeout, 60 s there): the
    # request head must be complete this long after the connection (or its first byte) came,
    # and a request body may pause at most body_timeout; else 408 and the connection closes.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    # Open client connections per gateway process; beyond it a new one gets 503 and is closed.
    max_connections: int = 4096
    # Requests on one keep-alive connection before it is closed (Nginx keepalive_requests).
    keepalive_requests: int = 1000
    # A buffered request body is held in memory up to this, then in a temporary file.
    body_buffer_bytes: int = 256 * 1024

    @property
    def hsts_header(self) -> str | None:
        """The Strict-Transport-Security value, or None when it should not be sent.

        Browsers pin HSTS to a host name whatever the port, so sending it for ``localhost``
        would force HTTPS on every other dev server the user runs on localhost: auto mode
        therefore only sends it when a real (non-loopback) name is served.
        """
        max_age = self.hsts_max_age
        if max_age is None:
            if all(is_loopback_name(name) for name in self.hostnames):
                return None
            max_age = 31536000
        if max_age == 0:
            return None
        return f"max-age={max_age}"


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """[admin]: the admin API, dashboard and metrics (gateway/admin/), on its own port."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8444
    htpasswd: Path | None = None


@dataclass(frozen=True, slots=True)
class TLSSettings:
    dir: Path = Path("certs")
    cert_file: Path | None = None
    key_file: Path | None = None
    # [tls.acme]: certificates from an ACME CA for the non-local hostnames (gateway/tls/acme.py)
    acme: ACMESettings | None = None


@dataclass(frozen=True, slots=True)
class ACMESettings:
    email: str | None = None
    directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    challenge: str = "http-01"
    # An extra root to trust for the directory's own HTTPS (a test CA such as Pebble's).
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class BackendSettings:
    host: str = "127.0.0.1"
    base_port: int = 8001
    workers: int = 2
    # A SQLite file, or a "postgresql://user:password@host:port/dbname" URL (a str).
    database: Path | str = Path("var/backend.db")
    outbox: Path = Path("var/outbox")
    # Base of the links in confirmation e-mails; None: https://<first hostname>:<https_port>.
    public_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 25
    mail_from: str = "no-reply@localhost"
    access_token_ttl: int = 15 * 60
    refresh_token_ttl: int = 30 * 24 * 3600
    graceful_timeout: float = 10.0

    def worker_ports(self) -> range:
        return range(self.base_port, self.base_port + self.workers)

    @property
    def state_dir(self) -> Path:
        """Where the generated JWT secret lives: next to the SQLite file, or (PostgreSQL) the
        outbox's parent directory (``var/`` by default)."""
        if isinstance(self.database, Path):
            return self.database.parent
        return self.outbox.parent


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """A ``[services.NAME]`` process the stack starts ``workers`` times, worker i with
    ``{port}`` = ``base_port + i``, and supervises (``gateway/runtime/supervisor.py``)."""

    name: str
    command: tuple[str, ...]
    base_port: int
    workers: int = 1
    cwd: Path = Path(".")
    env: dict[str, str] = field(default_factory=dict)
    # KEY=value lines; values are secrets as far as we know: never printed or logged.
    env_file: Path | None = None
    health_path: str = "/health"
    # A worker that does not answer health_path within this is reported with its output.
    start_timeout: float = 30.0
    graceful_timeout: float = 10.0

    def worker_ports(self) -> range:
        return range(self.base_port, self.base_port + self.workers)


@dataclass(frozen=True, slots=True)
class UpstreamServer:
    """One server of a pool, from a ``http://host:port`` or ``https://host:port`` URL."""

    host: str
    port: int
    scheme: str = "http"
    # Computed once: every proxied request looks its server up in dicts (pools, health) and
    # logs its address, and a frozen dataclass otherwise hashes all its fields each time.
    address: str = field(init=False, compare=False, repr=False)
    _hash: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        host = self.host
        address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "_hash", hash((host, self.port, self.scheme)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}"

    def __str__(self) -> str:
        return self.address


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    name: str
    servers: tuple[UpstreamServer, ...]
    health_path: str = "/health"
    health_interval: float = 2.0
    health_timeout: float = 1.0
    # None: any 2xx or 3xx counts as healthy.
    health_status: tuple[int, ...] | None = None
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1
    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    # Passive checks: max_fails failures within fail_window seconds mark a server DOWN.
    max_fails: int = 3
    fail_window: float = 10.0
    passive_5xx: bool = False
    # None: pool size - 1.
    max_retries: int | None = None
    # Idle pooled connections per server, and how long one may sit idle.  The expiry must stay
    # below the upstream's own keep-alive timeout (uvicorn: 5 s) so we never reuse a
    # connection the server is closing.
    keepalive: int = 64
    keepalive_timeout: float = 4.0
    # https:// servers: verified against the system trust store, or this CA file instead.
    tls_ca_file: Path | None = None
    # SNI and certificate name to expect; None: each server URL's host.
    tls_server_name: str | None = None
    # Loudly named on purpose: no certificate check at all (logged as a warning at start).
    tls_insecure_skip_verify: bool = False

    @property
    def retries(self) -> int:
        if self.max_retries is not None:
            return self.max_retries
        return max(len(self.servers) - 1, 0)


@dataclass(frozen=True, slots=True)
class RouteSettings:
    path_prefix: str
    # Exactly one of these three is set: what the route does.
    upstream: str | None = None
    static: Path | None = None
    redirect: str | None = None
    # Host names (``*.example.test`` wildcards) the route is for; empty: any served name.
    hosts: tuple[str, ...] = ()
    strip_prefix: bool = False
    cache: bool = True
    # Cache-Control of static files: revalidate each time by default (ETag makes it cheap).
    static_cache_control: str = "no-cache"
    # Names of [middlewares.NAME] tables, first = outermost.
    middlewares: tuple[str, ...] = ()
    # Read a request body whole (memory, then a temporary file) before an upstream connection
    # is used (Nginx proxy_request_buffering); false streams it (large uploads).
    request_buffering: bool = True

    @property
    def handler(self) -> str:
        return "static" if self.static else "redirect" if self.redirect else "proxy"


@dataclass(frozen=True, slots=True)
class MiddlewareSettings:
    """A ``[middlewares.NAME]`` table: its ``type`` and the converted keys of that type."""

    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CacheSettings:
    enabled: bool = True
    max_bytes: int = 64 * 1024 * 1024
    max_entry_bytes: int = 8 * 1024 * 1024
    # RFC 9213 target list, most specific first: these fields override Cache-Control for
    # this cache and are not sent on downstream.
    targeted_fields: tuple[str, ...] = ("CDN-Cache-Control",)
    # RFC 9111 §4.2.2 heuristic freshness: this share of the Last-Modified age, capped.
    heuristic_fraction: float = 0.1
    heuristic_max_seconds: float = 86400.0
    # Where stored responses live (gateway/cache/stores/): "memory" (each process its own),
    # "shared" (one LMDB store for all workers; the default when workers > 1) or a redis:// URL.
    store: str = "memory"
    shared_dir: Path | None = None  # not a key: the config's var/gateway-cache when shared


@dataclass(frozen=True, slots=True)
class Settings:
    path: Path
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    backend: BackendSettings = field(default_factory=BackendSettings)
    upstreams: dict[str, UpstreamSettings] = field(default_factory=dict)
    routes: tuple[RouteSettings, ...] = ()
    cache: CacheSettings = field(default_factory=CacheSettings)
    services: dict[str, ServiceSettings] = field(default_factory=dict)
    middlewares: dict[str, MiddlewareSettings] = field(default_factory=dict)
    admin: AdminSettings | None = None  # None: no [admin] table, no admin listener

    def summary(self) -> str:
        g = self.gateway
        servers = sum(len(u.servers) for u in self.upstreams.values())
        return (
            f"{self.path}: ok: https://{g.host}:{g.https_port} and http://{g.host}:{g.http_port}"
            f" for {', '.join(g.hostnames)}; {len(self.routes)} route(s), "
            f"{len(self.upstreams)} upstream(s) with {servers} server(s); "
            f"cache {'on' if self.cache.enabled else 'off'}"
        )


# --- value checkers -------------------------------------------------------------------------
# Each takes the raw TOML value and returns (converted value, None) or (None, "what is allowed").

Check = Callable[[Any], tuple[Any, str | None]]


def _bool(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, bool):
        return value, None
    return None, "must be true or false"


def _int(lo: int, hi: int | None = None) -> Check:
    allowed = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"

    def check(value: Any) -> tuple[Any, str | None]:
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"must be {allowed}"
        if value < lo or (hi is not None and value > hi):
            return None, f"must be {allowed}"
        return value, None

    return check


def _number(lo: float, hi: float | None = None, *, lo_exclusive: bool = True) -> Check:
    bound = f"> {lo}" if lo_exclusive else f">= {lo}"
    allowed = f"a number {bound}" + (f" and <= {hi}" if hi is not None else "")

    def check(value: Any) -> tuple[Any, str | None]:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"must be {allowed} (seconds)"
        v = float(value)
        too_low = v <= lo if lo_exclusive else v < lo
        if not math.isfinite(v) or too_low or (hi is not None and v > hi):
            return None, f"must be {allowed} (seconds)"
        return v, None

    return check


NUL_IN_PATH = "a path cannot contain a NUL character"


def _bool_or_path(value: Any) -> tuple[Any, str | None]:
    """true/false, or a non-empty path string (resolved by ``parse_settings``)."""
    if isinstance(value, str) and "\0" in value:
        return None, NUL_IN_PATH
    if isinstance(value, bool) or (isinstance(value, str) and value):
        return value, None
    return None, "must be true, false or a file path string"


def _str(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str) and value:
        return value, None
    return None, "must be a non-empty string"


def _one_of(*choices: Any) -> Check:
    def check(value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, bool) and value in choices:
            return value, None
        return None, "must be one of " + ", ".join(repr(c) for c in choices)

    return check


def _host(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str) or not value:
        return None, 'must be an IP address or host name to bind, e.g. "127.0.0.1"'
    return value, None


def _hostname(value: Any) -> tuple[Any, str | None]:
    allowed = 'must be a DNS name or IP address, e.g. "localhost"'
    if not isinstance(value, str) or not value or len(value) > 253:
        return None, allowed
    try:
        return str(ipaddress.ip_address(value)), None
    except ValueError:
        pass
    labels = value.lower().rstrip(".").split(".")
    for label in labels:
        if label == "*" and label is labels[0]:
            continue
        if not label or len(label) > 63 or not all(c.isalnum() or c == "-" for c in label):
            return None, allowed
        if label.startswith("-") or label.endswith("-") or not label.isascii():
            return None, allowed
    return value.lower().rstrip("."), None


def _list_of(item: Check, *, non_empty: bool = True) -> Check:
    def check(value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, list) or (non_empty and not value):
            return None, "must be a non-empty list" if non_empty else "must be a list"
        out = []
        for i, element in enumerate(value):
            converted, problem = item(element)
            if problem:
                return None, f"item {i} ({element!r}) {problem}"
            out.append(converted)
        return tuple(out), None

    return check


def _path_prefix(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str) or not value.startswith("/"):
        return None, 'must be a URL path starting with "/"'
    if any(c in value for c in "?# ") or "//" in value:
        return None, 'must be a plain path (no query, fragment, spaces or "//")'
    return value, None


def _http_path(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str) or not value.startswith("/") or " " in value:
        return None, 'must be a URL path starting with "/"'
    return value, None


def _upstream_url(value: Any) -> tuple[Any, str | None]:
    allowed = 'must be an http:// or https:// URL with a host, e.g. "http://127.0.0.1:8001"'
    if not isinstance(value, str):
        return None, allowed
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None, allowed
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None, allowed
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None, allowed
    default_port = 443 if parts.scheme == "https" else 80
    return UpstreamServer(parts.hostname, port or default_port, parts.scheme), None


def _redirect_url(value: Any) -> tuple[Any, str | None]:
    allowed = 'must be an absolute http:// or https:// URL, e.g. "https://example.org"'
    if not isinstance(value, str):
        return None, allowed
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return None, allowed
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None, allowed
    if parts.query or parts.fragment or any(c in value for c in " \r\n\t"):
        return None, allowed + " without query or fragment (the request's are appended)"
    return value.rstrip("/"), None


def _header_value(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str) and value and value.isprintable() and value.isascii():
        return value, None
    return None, "must be a non-empty header value of printable ASCII characters"


def _cidr(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str):
        return None, 'must be an IP address or CIDR network string, e.g. "10.0.0.0/8"'
    try:
        return str(ipaddress.ip_network(value, strict=False)), None
    except (TypeError, ValueError):
        return None, 'must be an IP address or CIDR network, e.g. "10.0.0.0/8"'


def _status(value: Any) -> tuple[Any, str | None]:
    return _int(100, 599)(value)


def _email(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str) and "@" in value.strip("@") and " " not in value:
        return value, None
    return None, "must be an e-mail address such as you@example.org"


def _https_url(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str) and urlsplit(value).scheme == "https" and urlsplit(value).netloc:
        return value, None
    return None, "must be an https:// URL, e.g. https://acme-v02.api.letsencrypt.org/directory"


def _name(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str) and value and all(c.isalnum() or c in "_-" for c in value):
        return value, None
    return None, "must be a name of letters, digits, '_' or '-'"


# --- table schemas --------------------------------------------------------------------------

_PATH = "path"  # marker: a non-empty string resolved against the config file's directory
_DATABASE = "database"  # marker: a postgresql:// URL kept as it is, else a _PATH
DATABASE_SCHEMES = ("postgresql", "postgres")

GATEWAY_KEYS: dict[str, Check | str] = {
    "host": _host,
    "http_port": _int(0, 65535),
    "https_port": _int(0, 65535),
    "hostnames": _list_of(_hostname),
    "redirect_status": _one_of(*REDIRECT_STATUSES),
    "max_body_bytes": _int(0),
    "max_header_bytes": _int(1024, 1 << 24),
    "access_log": _bool_or_path,
    "access_log_format": _one_of("text", "combined", "json"),
    "access_log_max_bytes": _int(0),
    "access_log_keep_days": _number(0),
    "hsts_max_age": _int(0),
    "trusted_proxies": _list_of(_cidr, non_empty=False),
    "keepalive_timeout": _number(0),
    "graceful_timeout": _number(0, lo_exclusive=False),
    "workers": _int(1, 64),
    "websocket_idle_timeout": _number(0),
    "max_websocket_tunnels": _int(1, 1_000_000),
    "http2": _bool,
    "ready_timeout": _number(0, 300, lo_exclusive=False),
    "server_timing": _bool,
    "trace": _bool,
    "header_timeout": _number(0, 3600),
    "body_timeout": _number(0, 3600),
    "max_connections": _int(1, 1_000_000),
    "keepalive_requests": _int(1, 1_000_000),
    "body_buffer_bytes": _int(0, 1 << 30),
}
ADMIN_KEYS: dict[str, Check | str] = {
    "enabled": _bool,
    "host": _host,
    "port": _int(1, 65535),
    "htpasswd": _PATH,
}
TLS_KEYS: dict[str, Check | str] = {"dir": _PATH, "cert_file": _PATH, "key_file": _PATH}
ACME_KEYS: dict[str, Check | str] = {
    "email": _email,
    "directory": _https_url,
    "challenge": _one_of("http-01", "tls-alpn-01"),
    "ca_file": _PATH,
}
BACKEND_KEYS: dict[str, Check | str] = {
    "host": _host,
    "base_port": _int(1, 65535),
    "workers": _int(1, 64),
    "database": _DATABASE,
    "outbox": _PATH,
    "public_url": _str,
    "smtp_host": _str,
    "smtp_port": _int(1, 65535),
    "mail_from": _str,
    "access_token_ttl": _int(1),
    "refresh_token_ttl": _int(1),
    "graceful_timeout": _number(0, lo_exclusive=False),
}
UPSTREAM_KEYS: dict[str, Check | str] = {
    "servers": _list_of(_upstream_url),
    "health_path": _http_path,
    "health_interval": _number(0),
    "health_timeout": _number(0),
    "health_status": _list_of(_status),
    "unhealthy_threshold": _int(1, 100),
    "healthy_threshold": _int(1, 100),
    "connect_timeout": _number(0),
    "read_timeout": _number(0),
    "max_fails": _int(0, 1000),
    "fail_window": _number(0),
    "passive_5xx": _bool,
    "max_retries": _int(0, 100),
    "keepalive": _int(0, 10000),
    "keepalive_timeout": _number(0),
    "tls_ca_file": _PATH,
    "tls_server_name": _hostname,
    "tls_insecure_skip_verify": _bool,
}
ROUTE_KEYS: dict[str, Check | str] = {
    "path_prefix": _path_prefix,
    "hosts": _list_of(_hostname),
    "upstream": _name,
    "static": _PATH,
    "redirect": _redirect_url,
    "strip_prefix": _bool,
    "cache": _bool,
    "static_cache_control": _header_value,
    "middlewares": _list_of(_name, non_empty=False),
    "request_buffering": _bool,
}
ROUTE_HANDLERS = ("upstream", "static", "redirect")


def _field_name(value: Any) -> tuple[Any, str | None]:
    tchar = "!#$%&'*+-.^_`|~"
    if isinstance(value, str) and value and all(c.isalnum() or c in tchar for c in value):
        if value.isascii():
            return value, None
    return None, 'must be an HTTP field name, e.g. "CDN-Cache-Control"'


def _fraction(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value), None
    return None, "must be a number from 0 to 1 (0 turns heuristic freshness off)"


def _cache_store(value: Any) -> tuple[Any, str | None]:
    if value in ("memory", "shared"):
        return value, None
    return _redis_url(value, '"memory", "shared" or "redis://host:port/db"')


def _rate_limit_store(value: Any) -> tuple[Any, str | None]:
    """Only Redis: without ``store`` the buckets stay on this machine (``rate_limit.py``)."""
    allowed = 'must be "redis://host:port/db"'
    if not isinstance(value, str) or not value.startswith("redis://"):
        return None, f"{allowed} (leave store out to keep the buckets on this machine)"
    return _redis_url(value, allowed)


def _redis_url(value: Any, allowed: str) -> tuple[Any, str | None]:
    if not isinstance(value, str) or not value.startswith("redis://"):
        return None, allowed
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None, f"{allowed} (the port must be a number 1-65535)"
    db = parts.path.lstrip("/")
    if not parts.hostname or port is None or parts.query or parts.fragment:
        return None, f"{allowed} with a host and a port"
    if db and not db.isdigit():
        return None, f"{allowed} (the database must be a number, got {db!r})"
    return value, None


CACHE_KEYS: dict[str, Check | str] = {
    "enabled": _bool,
    "max_bytes": _int(0),
    "max_entry_bytes": _int(0),
    "targeted_fields": _list_of(_field_name, non_empty=False),
    "heuristic_fraction": _fraction,
    "heuristic_max_seconds": _number(0, lo_exclusive=False),
    "store": _cache_store,
}
ROUTE_REQUIRED = ("path_prefix",)


def _realm(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str) and value and value.isprintable() and '"' not in value:
        return value, None
    return None, "must be a non-empty printable string without '\"'"


def _header_names(*, request: bool) -> Check:
    """A list of field names a headers middleware may touch (see ``_settable_field``)."""
    return _list_of(lambda value: _settable_field(value, request=request))


def _header_set(*, request: bool) -> Check:
    allowed = 'must be a table of Name = "value" (e.g. {X-Frame-Options = "DENY"})'

    def check(value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, dict) or not value:
            return None, allowed
        out: dict[str, str] = {}
        for name, item in value.items():
            problem = _settable_field(name, request=request)[1] or _header_value(item)[1]
            if problem:
                return None, f"{name!r}: {problem}"
            out[name] = item
        return out, None

    return check


def _settable_field(value: Any, *, request: bool) -> tuple[Any, str | None]:
    """Hop-by-hop and framing fields belong to each connection, and the forwarding family is
    rewritten by the proxy itself: a rule for them would silently break framing or never
    take effect, so it is refused."""
    from gateway.headers import FORWARDING, HOP_BY_HOP

    converted, problem = _field_name(value)
    if problem:
        return None, problem
    name = converted.lower().encode()
    if name in HOP_BY_HOP or name == b"content-length":
        return None, f"{value} is a hop-by-hop or framing header, which each connection sets"
    if request and (name in FORWARDING or name in (b"host", b"x-request-id")):
        return None, f"{value} is set by the gateway for every forwarded request"
    return converted, None


MIDDLEWARE_TYPES: dict[str, dict[str, Check | str]] = {
    "compress": {"min_bytes": _int(0)},
    "basic_auth": {
        "htpasswd": _PATH,
        "realm": _realm,
        "max_failures": _int(1, 10000),
        "failure_window": _number(0),
    },
    "rate_limit": {
        "average": _number(0),
        "burst": _int(1, 1_000_000),
        "store": _rate_limit_store,
    },
    "headers": {
        "request_set": _header_set(request=True),
        "request_remove": _header_names(request=True),
        "response_set": _header_set(request=False),
        "response_remove": _header_names(request=False),
    },
}
MIDDLEWARE_REQUIRED = {"basic_auth": ("htpasswd",)}


def is_database_url(value: str) -> bool:
    return value.partition("://")[0].lower() in DATABASE_SCHEMES and "://" in value


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: fit for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{netloc[2]}").geturl()


def _database_url(value: str) -> tuple[Any, str | None]:
    allowed = 'must be "postgresql://user:password@host:port/dbname" (or a SQLite file path)'
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return None, allowed
    if not parts.hostname or parts.path.strip("/") == "" or parts.fragment:
        return None, allowed
    return value, None


def _env_names(value: Any) -> tuple[Any, str | None]:
    from gateway.runtime.envfile import ENV_NAME

    allowed = 'must be a table of NAME = "string" (e.g. env = {LOG_LEVEL = "info"})'
    if not isinstance(value, dict):
        return None, allowed
    for key, item in value.items():
        if not ENV_NAME.fullmatch(key) or not isinstance(item, str):
            return None, f"{allowed}; {key!r} is not"
    return dict(value), None


SERVICE_KEYS: dict[str, Check | str] = {
    "command": _list_of(_str),
    "workers": _int(1, 64),
    "base_port": _int(1, 65535),
    "cwd": _PATH,
    "env": _env_names,
    "env_file": _PATH,
    "health_path": _http_path,
    "start_timeout": _number(0),
    "graceful_timeout": _number(0, lo_exclusive=False),
}
SERVICE_REQUIRED = ("command", "base_port")


class _Reader:
    """Collects converted values and error lines for one config file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{self.path}: {where}: {message}")

    def table(
        self, data: Any, where: str, schema: dict[str, Check | str], required: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.error(where, f"must be a table, got {data!r}")
            return {}
        values: dict[str, Any] = {}
        for key, raw in data.items():
            check = schema.get(key)
            if check is None:
                known = ", ".join(schema)
                self.error(f"{where} {key}", f"unknown key (allowed keys: {known})")
                continue
            if check == _DATABASE and isinstance(raw, str) and is_database_url(raw):
                url, problem = _database_url(raw)
                if problem:
                    self.error(f"{where} {key} = {redact_url(raw)!r}", problem)
                else:
                    values[key] = url
                continue
            if check in (_PATH, _DATABASE):
                if not isinstance(raw, str) or not raw:
                    self.error(f"{where} {key} = {raw!r}", "must be a non-empty path string")
                elif "\0" in raw:  # no file system takes it (resolve() would raise ValueError)
                    self.error(f"{where} {key} = {raw!r}", NUL_IN_PATH)
                else:
                    values[key] = (self.base / raw).resolve()
                continue
            assert callable(check)
            converted, problem = check(raw)
            if problem:
                self.error(f"{where} {key} = {_show(raw)}", problem)
            else:
                values[key] = converted
        for key in required:
            if key not in data:
                self.error(f"{where} {key}", "is required")
        return values


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def load_settings(path: str | Path) -> Settings:
    """Read and validate ``path``; raise ConfigError listing every problem found."""
    path = Path(path).resolve()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_settings(data, path)


def parse_settings(data: dict[str, Any], path: Path) -> Settings:
    r = _Reader(path)
    top = {"gateway", "tls", "backend", "upstreams", "routes", "cache", "services", "middlewares"}
    top.add("admin")
    for key in data:
        if key not in top:
            r.error(f"[{key}]", f"unknown table (allowed: {', '.join(sorted(top))})")

    gateway_values = r.table(data.get("gateway", {}), "[gateway]", GATEWAY_KEYS)
    if isinstance(gateway_values.get("access_log"), str):  # a file, relative to the config
        gateway_values["access_log"] = (r.base / gateway_values["access_log"]).resolve()
    gateway = GatewaySettings(**gateway_values)
    admin = _read_admin(r, data["admin"], gateway) if "admin" in data else None
    tls_data = data.get("tls", {})
    acme_data = tls_data.get("acme") if isinstance(tls_data, dict) else None
    if acme_data is not None:
        tls_data = {key: value for key, value in tls_data.items() if key != "acme"}
    tls_values = r.table(tls_data, "[tls]", TLS_KEYS)
    tls_values.setdefault("dir", (r.base / "certs").resolve())
    if acme_data is not None:
        tls_values["acme"] = ACMESettings(**r.table(acme_data, "[tls.acme]", ACME_KEYS))
    tls = TLSSettings(**tls_values)
    backend_values = r.table(data.get("backend", {}), "[backend]", BACKEND_KEYS)
    backend_values.setdefault("database", (r.base / "var/backend.db").resolve())
    backend_values.setdefault("outbox", (r.base / "var/outbox").resolve())
    backend = BackendSettings(**backend_values)
    cache_values = r.table(data.get("cache", {}), "[cache]", CACHE_KEYS)
    # One store for all workers of the machine unless told otherwise (bench/README.md).
    cache_values.setdefault("store", "shared" if gateway.workers > 1 else "memory")
    if cache_values["store"] == "shared":
        cache_values["shared_dir"] = (r.base / "var/gateway-cache").resolve()
    cache = CacheSettings(**cache_values)

    upstreams: dict[str, UpstreamSettings] = {}
    declared: set[str] = set()  # tables present, valid or not: routes may name them
    raw_upstreams = data.get("upstreams", {})
    if not isinstance(raw_upstreams, dict):
        r.error("[upstreams]", "must be a table of [upstreams.NAME] tables")
        raw_upstreams = {}
    for name, raw in raw_upstreams.items():
        declared.add(name)
        where = f"[upstreams.{name}]"
        if _name(name)[1]:
            r.error(where, "the upstream name must be letters, digits, '_' or '-'")
        values = r.table(raw, where, UPSTREAM_KEYS, required=("servers",))
        if "servers" in values:
            upstreams[name] = UpstreamSettings(name=name, **values)

    services = _read_services(r, data.get("services", {}))
    for service in services.values():
        if service.name not in declared:  # its own pool: its workers
            declared.add(service.name)
            servers = tuple(UpstreamServer("127.0.0.1", p) for p in service.worker_ports())
            upstreams[service.name] = UpstreamSettings(
                name=service.name, servers=servers, health_path=service.health_path
            )

    routes: list[RouteSettings] = []
    raw_routes = data.get("routes", [])
    if not isinstance(raw_routes, list):
        r.error("[[routes]]", "must be an array of tables ([[routes]])")
        raw_routes = []
    for i, raw in enumerate(raw_routes):
        where = f"[[routes]] #{i + 1}"
        values = r.table(raw, where, ROUTE_KEYS, required=ROUTE_REQUIRED)
        given = [key for key in ROUTE_HANDLERS if isinstance(raw, dict) and key in raw]
        if len(given) != 1:
            r.error(
                where,
                "give exactly one of upstream, static or redirect"
                + (f" (got {', '.join(given)})" if given else ""),
            )
        elif "path_prefix" in values and given[0] in values:
            routes.append(RouteSettings(**values))

    middlewares = _read_middlewares(r, data.get("middlewares", {}), routes)
    _check_relations(r, gateway, tls, backend, upstreams, declared, routes, cache)
    _check_ports(r, gateway, backend, services)
    if r.errors:
        raise ConfigError(r.errors)
    return Settings(
        path, gateway, tls, backend, upstreams, tuple(routes), cache, services, middlewares, admin
    )


def _read_admin(r: _Reader, raw: Any, gateway: GatewaySettings) -> AdminSettings:
    """[admin]: its keys, an htpasswd that reads, and no open admin port without one."""
    admin = AdminSettings(**r.table(raw, "[admin]", ADMIN_KEYS))
    if not admin.enabled:
        return admin
    if admin.htpasswd is None and not is_loopback_name(admin.host):
        r.error(
            f"[admin] host = {admin.host!r}",
            'is not a loopback address, so the admin API needs htpasswd = "FILE" '
            '(basic auth) or host = "127.0.0.1"',
        )
    if admin.htpasswd is not None:
        from gateway.middleware.htpasswd import HtpasswdError, read_htpasswd

        try:
            read_htpasswd(admin.htpasswd)
        except HtpasswdError as exc:
            r.error(f"[admin] htpasswd = {str(admin.htpasswd)!r}", str(exc))
    if _same_host(admin.host, gateway.host):
        for key in ("http_port", "https_port"):
            if admin.port == getattr(gateway, key):
                r.error(
                    f"[admin] port = {admin.port}",
                    f"clashes with [gateway] {key}; the admin listener needs its own port",
                )
    return admin


def _read_middlewares(
    r: _Reader, raw_middlewares: Any, routes: list[RouteSettings]
) -> dict[str, MiddlewareSettings]:
    """The [middlewares.NAME] tables (keys checked per ``type``) and the routes' references."""
    if not isinstance(raw_middlewares, dict):
        r.error("[middlewares]", "must be a table of [middlewares.NAME] tables")
        raw_middlewares = {}
    middlewares: dict[str, MiddlewareSettings] = {}
    types = ", ".join(MIDDLEWARE_TYPES)
    for name, raw in raw_middlewares.items():
        where = f"[middlewares.{name}]"
        if _name(name)[1]:
            r.error(where, "the middleware name must be letters, digits, '_' or '-'")
            continue
        if not isinstance(raw, dict):
            r.error(where, f"must be a table, got {raw!r}")
            continue
        kind = raw.get("type")
        if kind not in MIDDLEWARE_TYPES:
            shown = f" = {_show(kind)}" if "type" in raw else ""
            r.error(f"{where} type{shown}", f"must be one of: {types}")
            continue
        options = {key: value for key, value in raw.items() if key != "type"}
        required = MIDDLEWARE_REQUIRED.get(kind, ())
        before = len(r.errors)
        values = r.table(options, where, MIDDLEWARE_TYPES[kind], required=required)
        if kind == "basic_auth" and "htpasswd" in values:
            from gateway.middleware.htpasswd import HtpasswdError, read_htpasswd

            try:
                read_htpasswd(values["htpasswd"])
            except HtpasswdError as exc:
                r.error(f"{where} htpasswd = {str(values['htpasswd'])!r}", str(exc))
        if len(r.errors) == before:
            middlewares[name] = MiddlewareSettings(name, kind, values)
    for i, route in enumerate(routes):
        for name in route.middlewares:
            if name not in raw_middlewares:
                known = ", ".join(sorted(raw_middlewares)) or "none defined"
                r.error(
                    f"[[routes]] #{i + 1} middlewares = {list(route.middlewares)!r}",
                    f"no such middleware {name!r} (defined: {known}); "
                    f"add a [middlewares.{name}] table",
                )
    return middlewares


def _read_services(r: _Reader, raw_services: Any) -> dict[str, ServiceSettings]:
    from gateway.runtime.envfile import EnvFileError, read_env_file

    if not isinstance(raw_services, dict):
        r.error("[services]", "must be a table of [services.NAME] tables")
        return {}
    services: dict[str, ServiceSettings] = {}
    for name, raw in raw_services.items():
        where = f"[services.{name}]"
        if _name(name)[1]:
            r.error(where, "the service name must be letters, digits, '_' or '-'")
            continue
        env: Any = {}
        if isinstance(raw, dict):
            raw = dict(raw)  # not the caller's
            env = raw.pop("env", {})
        values = r.table(raw, where, SERVICE_KEYS, required=SERVICE_REQUIRED)
        values["env"], problem = _env_names(env)
        if problem:  # the values are not shown: they may be secrets
            r.error(f"{where} env", problem)
        if "command" not in values or "base_port" not in values or problem:
            continue
        values.setdefault("cwd", r.base)
        if not values["cwd"].is_dir():
            r.error(f"{where} cwd = {str(values['cwd'])!r}", "no such directory")
        if "env_file" in values:
            try:
                read_env_file(values["env_file"])  # checked now; read again at each start
            except EnvFileError as exc:
                r.error(f"{where} env_file", str(exc))
        services[name] = ServiceSettings(name=name, **values)
    return services


def _check_ports(
    r: _Reader,
    gateway: GatewaySettings,
    backend: BackendSettings,
    services: dict[str, ServiceSettings],
) -> None:
    """Every service port must be free of the gateway's, the backend's and other services'."""
    owners: dict[int, str] = {}
    if _same_host(gateway.host, "127.0.0.1"):
        for key in ("http_port", "https_port"):
            owners.setdefault(getattr(gateway, key), f"[gateway] {key}")
    for port in backend.worker_ports() if _same_host(backend.host, "127.0.0.1") else ():
        owners.setdefault(port, "the [backend] workers (base_port + workers)")
    for service in services.values():
        ports = service.worker_ports()
        where = f"[services.{service.name}] base_port = {service.base_port}"
        if ports.stop - 1 > 65535:
            r.error(where, f"with workers = {service.workers} the last port would exceed 65535")
            continue
        for port in ports:
            owner = owners.get(port)
            if owner is not None:
                r.error(where, f"port {port} clashes with {owner}; give each its own ports")
                break
        for port in ports:
            owners.setdefault(port, f"[services.{service.name}] (base_port + workers)")


def _check_relations(
    r: _Reader,
    gateway: GatewaySettings,
    tls: TLSSettings,
    backend: BackendSettings,
    upstreams: dict[str, UpstreamSettings],
    declared: set[str],
    routes: list[RouteSettings],
    cache: CacheSettings,
) -> None:
    """Rules that span keys: references, clashes and pairs that go together."""
    seen: set[tuple[frozenset[str], str]] = set()
    served = _served_names(gateway.hostnames)
    for i, route in enumerate(routes):
        where = f"[[routes]] #{i + 1}"
        if route.upstream is not None and route.upstream not in declared:
            known = ", ".join(sorted(upstreams)) or "none defined"
            r.error(
                f"{where} upstream = {route.upstream!r}",
                f"no such upstream (defined: {known}); add an [upstreams.{route.upstream}] table",
            )
        if route.static is not None and not route.static.is_dir():
            r.error(f"{where} static = {str(route.static)!r}", "no such directory")
        if route.static is None and "static_cache_control" in _given(route):
            r.error(f"{where} static_cache_control", "only applies to a route with static")
        if route.upstream is None and "request_buffering" in _given(route):
            r.error(f"{where} request_buffering", "only applies to a route with upstream")
        identity = (frozenset(route.hosts), route.path_prefix)
        if identity in seen:
            hosts = f"hosts {list(route.hosts)}" if route.hosts else "no hosts"
            r.error(
                f"{where} path_prefix = {route.path_prefix!r}",
                f"is used by an earlier route with {hosts} too; one of them could never match",
            )
        seen.add(identity)
        for host in route.hosts:
            if not served(host):
                r.error(
                    f"{where} hosts = {list(route.hosts)!r}",
                    f"{host!r} is not a served name: add it (or a wildcard covering it) to "
                    "[gateway] hostnames, which the certificate covers",
                )

    if gateway.http_port and gateway.http_port == gateway.https_port:
        r.error(
            f"[gateway] https_port = {gateway.https_port}",
            "clashes with http_port; the two listeners need different ports",
        )
    if _same_host(gateway.host, backend.host):
        for key in ("http_port", "https_port"):
            port = getattr(gateway, key)
            if port and port in backend.worker_ports():
                ports = backend.worker_ports()
                r.error(
                    f"[gateway] {key} = {port}",
                    f"clashes with the backend workers' ports {ports.start}-{ports.stop - 1} "
                    "([backend] base_port + workers)",
                )
    if backend.worker_ports().stop - 1 > 65535:
        r.error(
            f"[backend] base_port = {backend.base_port}",
            f"with workers = {backend.workers} the last port would exceed 65535",
        )
    if (tls.cert_file is None) != (tls.key_file is None):
        r.error("[tls] cert_file/key_file", "give both cert_file and key_file, or neither")
    for upstream in upstreams.values():
        where = f"[upstreams.{upstream.name}]"
        # health_timeout may exceed health_interval: a round of checks waits for the last
        # one before the next starts, so checks never overlap (and no default can clash).
        uses_tls = any(server.scheme == "https" for server in upstream.servers)
        for key in ("tls_ca_file", "tls_server_name", "tls_insecure_skip_verify"):
            if not uses_tls and getattr(upstream, key) not in (None, False):
                r.error(f"{where} {key}", "only applies to https:// servers")
        if upstream.tls_ca_file is not None and not upstream.tls_ca_file.is_file():
            r.error(f"{where} tls_ca_file = {str(upstream.tls_ca_file)!r}", "no such file")
        for server in upstream.servers:
            if _same_host(gateway.host, server.host) and server.port in (
                gateway.http_port,
                gateway.https_port,
            ):
                r.error(
                    f"{where} servers",
                    f"{server.address} is the gateway's own listener (a forwarding loop)",
                )
    if cache.max_entry_bytes > cache.max_bytes:
        r.error(
            f"[cache] max_entry_bytes = {cache.max_entry_bytes}",
            f"must not exceed max_bytes ({cache.max_bytes})",
        )


def _given(route: RouteSettings) -> set[str]:
    """The keys of a route that differ from their defaults (i.e. that the user wrote)."""
    defaults = RouteSettings(path_prefix=route.path_prefix)
    return {key for key in ROUTE_KEYS if getattr(route, key) != getattr(defaults, key)}


def _served_names(hostnames: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a route's host is covered by ``hostnames`` (a wildcard covers one label, and
    a route may name the wildcard itself)."""
    exact = set(hostnames)
    suffixes = [name[1:] for name in hostnames if name.startswith("*.")]

    def served(host: str) -> bool:
        if host in exact:
            return True
        return any(
            host.endswith(s) and len(host) > len(s) and "." not in host[: -len(s)] for s in suffixes
        )

    return served


def _same_host(a: str, b: str) -> bool:
    loopback = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}
    return a == b or (a in loopback and b in loopback)
