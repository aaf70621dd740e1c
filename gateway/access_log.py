"""One access-log line per request: client, method, path, status, bytes, upstream, duration.

The line is built only when logging is on, from an ``Exchange`` record the proxy fills in as
the request goes; the format is close to Nginx's ``combined`` plus ``$upstream_addr`` and
``$request_time``, so the usual grep habits work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from typing import Any

log = logging.getLogger("gateway.access")


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

    @property
    def target(self) -> str:
        scope = self.scope
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string")
        return (path + b"?" + query if query else path).decode("latin-1")

    @property
    def line(self) -> tuple[str, str]:
        return self.scope["method"], self.target


class AccessLog:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def write(self, exchange: Exchange) -> None:
        if not self.enabled or not log.isEnabledFor(logging.INFO):
            return
        scope = exchange.scope
        client = scope.get("client")
        elapsed = time.perf_counter() - exchange.started
        log.info(
            '%s "%s %s HTTP/%s" %d %d upstream=%s cache=%s rt=%.3f%s',
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
