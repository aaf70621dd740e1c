"""One access-log line per request: client, method, path, status, bytes, upstream, duration.

The line is built only when logging is on, from an ``Exchange`` record the proxy fills in as
the request goes; the format is close to Nginx's ``combined`` plus ``$upstream_addr`` and
``$request_time``, so the usual grep habits work.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO


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


_STDOUT: TextIO | None = None


def _buffered_stdout() -> TextIO:
    global _STDOUT
    if _STDOUT is None:
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):  # replaced stdout (pytest capture)
            return sys.stdout
        _STDOUT = open(
            fd, "w", buffering=1 << 16, encoding="utf-8", errors="replace", closefd=False
        )  # noqa: SIM115 - lives as long as the process
    return _STDOUT


class AccessLog:
    """Writes access lines straight to a stream (stdout by default), like Nginx's access_log.

    Going through ``logging`` cost about a fifth of the gateway's CPU per request (a
    LogRecord, a lock, a time format) and a flush per line another tenth; here a line is one
    string format and a buffered write, the timestamp is formatted once per second, and the
    buffer is flushed within a second (Nginx's ``access_log ... buffer=... flush=1s``).
    """

    FLUSH_INTERVAL = 1.0

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        # Our own buffer over stdout's descriptor: PYTHONUNBUFFERED (common in containers)
        # would otherwise turn every line into a write(2).
        self.stream = stream if stream is not None else _buffered_stdout()
        self._second = -1
        self._stamp = ""
        self._flush_timer: asyncio.TimerHandle | None = None

    def flush(self) -> None:
        self._flush_timer = None
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def write(self, exchange: Exchange) -> None:
        if not self.enabled:
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
        scope = exchange.scope
        client = scope.get("client")
        elapsed = time.perf_counter() - exchange.started
        line = '%s %s "%s %s HTTP/%s" %d %d upstream=%s cache=%s rt=%.3f%s\n' % (  # noqa: UP031
            self._stamp,
            client[0] if client else "-",
            scope["method"],
            exchange.target,
            scope.get("http_version", "1.1"),
            exchange.status,
            exchange.bytes_sent,
            exchange.upstream,
            exchange.cache,
            elapsed,
            " aborted" if exchange.aborted else "",
        )
        try:
            self.stream.write(line)
        except (OSError, ValueError):
            # A closed or full log pipe must never fail a request.
            return
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                self.FLUSH_INTERVAL, self.flush
            )
