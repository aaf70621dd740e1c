"""One access-log line per request: client, method, path, status, bytes, upstream, duration.

The line is built only when logging is on, from an ``Exchange`` record the proxy fills in as
the request goes.  Three formats (``[gateway] access_log_format``): ``text`` (close to Nginx's
``combined`` plus ``$upstream_addr`` and ``$request_time``, so the usual grep habits work),
``combined`` (exactly Nginx's/Apache's, for log analysers) and ``json`` (one object a line,
for CloudWatch/Loki/jq).  Lines go to stdout, or to a file (``access_log = "PATH"``) that is
rotated past ``access_log_max_bytes``, whose rotated copies older than
``access_log_keep_days`` are deleted, and that SIGUSR1 reopens (logrotate's ``postrotate``).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.config import GatewaySettings

if TYPE_CHECKING:
    from gateway.cache.storing import StoredResponse
    from gateway.tracing import Trace


class Exchange:
    """What happened to one request, for the access log and error messages."""

    __slots__ = (
        "scope",
        "started",
        "status",
        "bytes_sent",
        "upstream",
        "response_started",
        "aborted",
        "cache",
        "upstream_5xx",
        "request_id",
        "upstream_seconds",
        "trace",
        "fresh_hit",
    )

    def __init__(self, scope: MutableMapping[str, Any]) -> None:
        self.scope = scope
        self.started = time.perf_counter()
        self.status = 0
        self.bytes_sent = 0
        self.upstream = "-"
        self.response_started = False
        self.aborted = False
        self.cache = "-"
        self.upstream_5xx = False
        self.request_id = ""  # X-Request-ID, set by GatewayApp
        # Time from writing the request upstream to its response head, all attempts.
        self.upstream_seconds = 0.0
        self.trace: Trace | None = None  # trace mode only (gateway.tracing)
        # The stored response a fresh cache hit was answered from (for ``cache.hot``).
        self.fresh_hit: StoredResponse | None = None

    @property
    def target(self) -> str:
        scope = self.scope
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string")
        target: bytes = path + b"?" + query if query else path
        return target.decode("latin-1")

    @property
    def line(self) -> tuple[str, str]:
        return self.scope["method"], self.target


PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are never interleaved
FORMATS = ("text", "combined", "json")

log = logging.getLogger("gateway.access_log")


def _header(scope: MutableMapping[str, Any], name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return ""


def _quoted(text: str) -> str:
    """A value inside double quotes in the combined format, escaped as Nginx does."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(
        c if c.isprintable() and c not in '"\\' else f"\\x{ord(c) & 0xFF:02X}" for c in text
    )


def text_line(exchange: Exchange, stamp: str, elapsed: float) -> str:
    scope = exchange.scope
    client = scope.get("client")
    return '%s %s "%s %s HTTP/%s" %d %d upstream=%s cache=%s rt=%.3f id=%s%s\n' % (  # noqa: UP031
        stamp,
        client[0] if client else "-",
        scope["method"],
        exchange.target,
        scope.get("http_version", "1.1"),
        exchange.status,
        exchange.bytes_sent,
        exchange.upstream,
        exchange.cache,
        elapsed,
        exchange.request_id or "-",
        " aborted" if exchange.aborted else "",
    )


def combined_line(exchange: Exchange, stamp: str, elapsed: float) -> str:
    """Nginx's ``combined``: ``$remote_addr - $remote_user [$time_local] "$request" $status
    $body_bytes_sent "$http_referer" "$http_user_agent"``."""
    scope = exchange.scope
    client = scope.get("client")
    request = f"{scope['method']} {exchange.target} HTTP/{scope.get('http_version', '1.1')}"
    return '%s - - [%s] "%s" %d %d "%s" "%s"\n' % (  # noqa: UP031
        client[0] if client else "-",
        stamp,
        _quoted(request),
        exchange.status,
        exchange.bytes_sent,
        _quoted(_header(scope, b"referer")) or "-",
        _quoted(_header(scope, b"user-agent")) or "-",
    )


def json_line(exchange: Exchange, stamp: str, elapsed: float) -> str:
    scope = exchange.scope
    client = scope.get("client")
    record = {
        "time": stamp,
        "client": client[0] if client else None,
        "method": scope["method"],
        "target": exchange.target,
        "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
        "host": _header(scope, b"host") or None,
        "status": exchange.status,
        "bytes": exchange.bytes_sent,
        "upstream": None if exchange.upstream == "-" else exchange.upstream,
        "cache": None if exchange.cache == "-" else exchange.cache,
        "duration": round(elapsed, 6),
        "request_id": exchange.request_id or None,
        "user_agent": _header(scope, b"user-agent") or None,
        "referer": _header(scope, b"referer") or None,
        "aborted": exchange.aborted,
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


LineFormat = Callable[[Exchange, str, float], str]
# Per format: how a line is made, and the strftime of its time stamp (made once a second).
LINE_FORMATS: dict[str, tuple[LineFormat, str]] = {
    "text": (text_line, "%Y-%m-%dT%H:%M:%S%z"),
    "combined": (combined_line, "%d/%b/%Y:%H:%M:%S %z"),
    "json": (json_line, "%Y-%m-%dT%H:%M:%S%z"),
}


# --- where the lines go ---------------------------------------------------------------------


class LogFile:
    """An append-only log file, rotated by size, with old rotations deleted; safe to share
    between worker processes.

    Each process holds its own descriptor (``O_APPEND``, so batches from several processes
    never overwrite each other).  The one that finds the file past ``max_bytes`` takes an
    ``flock`` on it and, if the path still names that file, renames it to
    ``NAME.YYYYmmdd-HHMMSS`` and opens a new one; the others find their (renamed) file past
    the limit at their next write, see the path now names another file, and reopen: no
    coordinator process, no lost line.  ``clock`` (seconds since the epoch) is injectable.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int = 0,
        keep_days: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep_seconds = keep_days * 86400
        self.clock = clock
        self.fd: int | None = None
        self._failing = False  # an error is logged once, until writing works again
        self.closed = False  # for good (a reload replaced it): late lines are dropped
        self._open()

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            self._failed(f"cannot open {self.path}: {exc.strerror}")

    def _failed(self, message: str) -> None:
        if not self._failing:
            self._failing = True
            log.error("access log: %s; lines are dropped until it works again", message)

    def close(self) -> None:
        self._close()
        self.closed = True

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def reopen(self) -> None:
        """Start writing to whatever file the path names now (SIGUSR1, after a rotation)."""
        self._close()
        self._open()

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.fd is None:
            self._open()  # it failed before: a new directory, space freed, permissions fixed
            if self.fd is None:
                return
        try:
            os.write(self.fd, data)
        except OSError as exc:
            self._failed(f"cannot write {self.path}: {exc.strerror}")
            return
        if self._failing:
            self._failing = False
            log.warning("access log: writing %s again", self.path)
        if self.max_bytes and os.fstat(self.fd).st_size >= self.max_bytes:
            self.rotate()

    def rotate(self) -> Path | None:
        """Rename the file aside (unless another process just did) and start a new one; the
        renamed path, or None when only reopened."""
        assert self.fd is not None
        rotated: Path | None = None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                ours = os.fstat(self.fd)
                try:
                    current = os.stat(self.path)
                except FileNotFoundError:
                    current = None
                if current is not None and (current.st_ino, current.st_dev) == (
                    ours.st_ino,
                    ours.st_dev,
                ):
                    rotated = self._rotated_name()
                    os.rename(self.path, rotated)
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        except OSError as exc:
            self._failed(f"cannot rotate {self.path}: {exc.strerror}")
            return None
        self.reopen()
        if rotated is not None:
            self.delete_expired()
        return rotated

    def _rotated_name(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.clock()))
        candidate = self.path.with_name(f"{self.path.name}.{stamp}")
        n = 1
        while candidate.exists():
            candidate = self.path.with_name(f"{self.path.name}.{stamp}.{n}")
            n += 1
        return candidate

    def rotated_files(self) -> list[Path]:
        prefix = self.path.name + "."
        try:
            names = os.listdir(self.path.parent)
        except OSError:
            return []
        return sorted(
            self.path.parent / name
            for name in names
            if name.startswith(prefix) and name[len(prefix) : len(prefix) + 1].isdigit()
        )

    def delete_expired(self) -> list[Path]:
        """Delete rotated files last written more than ``keep_days`` ago (0: keep all)."""
        if not self.keep_seconds:
            return []
        cutoff = self.clock() - self.keep_seconds
        deleted = []
        for path in self.rotated_files():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    deleted.append(path)
            except OSError:
                continue  # another process deleted it first
        return deleted


def write_stdout(lines: list[str]) -> None:
    """Batches cut at line ends into writes of at most PIPE_BUF bytes, so several gateway
    worker processes sharing one stdout pipe never interleave inside a line."""
    fd = sys.stdout.fileno()
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        data = line.encode("utf-8", "replace")
        if chunk and size + len(data) > PIPE_BUF:
            os.write(fd, b"".join(chunk))
            chunk, size = [], 0
        chunk.append(data)
        size += len(data)
    if chunk:
        os.write(fd, b"".join(chunk))


class AccessLog:
    """Writes access lines in batches, like Nginx's ``access_log ... buffer= flush=1s``.

    Going through ``logging`` cost about a fifth of the gateway's CPU per request (a
    LogRecord, a lock, a time format) and a write per line another tenth.  Here a line is
    one string format appended to a list; the batch is written when it passes 32 KiB or a
    second after its first line.  A ``stream`` (tests) receives the same batches; a ``file``
    receives them instead of stdout.
    """

    FLUSH_INTERVAL = 1.0
    FLUSH_BYTES = 32 * 1024

    def __init__(
        self,
        enabled: bool,
        stream: TextIO | None = None,
        *,
        file: LogFile | None = None,
        format: str = "text",
    ) -> None:
        self.enabled = enabled
        self.stream = stream
        self.file = file
        self.format = format
        self._line, self._stamp_format = LINE_FORMATS[format]
        self._lines: list[str] = []
        self._size = 0
        self._second = -1
        self._stamp = ""
        self._flush_timer: asyncio.TimerHandle | None = None

    @classmethod
    def from_settings(cls, g: GatewaySettings) -> AccessLog:
        file = None
        if isinstance(g.access_log, Path):
            file = LogFile(g.access_log, g.access_log_max_bytes, g.access_log_keep_days)
            file.delete_expired()
        return cls(bool(g.access_log), file=file, format=g.access_log_format)

    def same_destination(self, g: GatewaySettings) -> bool:
        """Whether these settings would write the same lines to the same place (reload)."""
        path = self.file.path if self.file is not None else self.enabled
        same_file = self.file is None or (
            self.file.max_bytes == g.access_log_max_bytes
            and self.file.keep_seconds == g.access_log_keep_days * 86400
        )
        return path == g.access_log and self.format == g.access_log_format and same_file

    def reopen(self) -> None:
        self.flush()
        if self.file is not None:
            self.file.reopen()

    def close(self) -> None:
        self.flush()
        if self.file is not None:
            self.file.close()

    def flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        lines, self._lines, self._size = self._lines, [], 0
        if not lines:
            return
        try:
            if self.stream is not None:
                self.stream.write("".join(lines))
                self.stream.flush()
            elif self.file is not None:
                self.file.write("".join(lines).encode("utf-8", "replace"))
            else:
                write_stdout(lines)
        except (OSError, ValueError, AttributeError):
            pass  # a closed or full log pipe must never fail a request

    def write(self, exchange: Exchange) -> None:
        if not self.enabled:
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self._stamp_format, time.localtime(second))
        line = self._line(exchange, self._stamp, time.perf_counter() - exchange.started)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_BYTES:
            self.flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                self.FLUSH_INTERVAL, self.flush
            )
