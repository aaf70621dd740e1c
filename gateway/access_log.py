"""One access-log line per request: client, method, path, status, bytes, upstream, duration.

The line is built only when logging is on, from an ``Exchange`` record the proxy fills in as
the request goes; the format is close to Nginx's ``combined`` plus ``$upstream_addr`` and
``$request_time``, so the usual grep habits work.
"""

from __future__ import annotations

import asyncio
import os
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
        "request_id",
        "upstream_seconds",
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


class AccessLog:
    """Writes access lines to stdout in batches, like Nginx's ``access_log ... buffer=
    flush=1s``.

    Going through ``logging`` cost about a fifth of the gateway's CPU per request (a
    LogRecord, a lock, a time format) and a write per line another tenth.  Here a line is
    one string format appended to a list; the batch is written when it passes 32 KiB or a
    second after its first line.  Batches are cut at line ends into writes of at most
    PIPE_BUF bytes, so several gateway worker processes sharing one stdout pipe never
    interleave inside a line.  A ``stream`` (tests) receives the same batches.
    """

    FLUSH_INTERVAL = 1.0
    FLUSH_BYTES = 32 * 1024

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream
        self._lines: list[str] = []
        self._size = 0
        self._second = -1
        self._stamp = ""
        self._flush_timer: asyncio.TimerHandle | None = None

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
                return
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
        except (OSError, ValueError, AttributeError):
            pass  # a closed or full log pipe must never fail a request

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
        line = '%s %s "%s %s HTTP/%s" %d %d upstream=%s cache=%s rt=%.3f id=%s%s\n' % (  # noqa: UP031
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
            exchange.request_id or "-",
            " aborted" if exchange.aborted else "",
        )
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_BYTES:
            self.flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                self.FLUSH_INTERVAL, self.flush
            )
