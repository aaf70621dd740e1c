"""Hot hits: fresh cache hits answered by the listeners themselves, before any ASGI cycle.

Why.  A small cache hit through the whole request path (uvicorn's scope, cycle and task, the
app's validation, routing, cache lookup and send wrappers) measured ~105 µs of CPU against
~20 µs for the same bytes written straight from the listener's parser callback (one gateway
process, ``wrk -t1 -c32``, bench/README.md "Session 4").  Nginx's ``proxy_cache`` hit is one
lookup and one write; this is ours.

How it stays exactly the slow path's answer.  Nothing is decided here that the full path has
not decided first: when ``GatewayApp`` has answered a request with a fresh hit (``publish``),
and that request was plain and its route has nothing around the cache, the answer's bytes are
kept, keyed by the connection's TLS server name, the Host field and the request target exactly
as received.  A later request with the same key, on an HTTP/1.1 connection with nothing in
flight (``serve``: the response's bytes) or as a new HTTP/2 stream without a body
(``serve_fields``: its status and fields, for the HPACK encoder), is answered from them only
while all of this holds, else it takes the full path as before:

- the request is plain: GET (published by a GET; a HEAD gets the same head and no body),
  HTTP/1.1 or HTTP/2, origin-form target, no upgrade, exactly one Host (HTTP/2's
  ``:authority``), and only header fields that no
  part of a fresh hit reads (``INERT_FIELDS``: no Cache-Control, Pragma, conditionals, Range,
  Authorization, Via, X-Request-ID, body framing, ...): the full path would decide the same
  for it.  ``Connection: close`` (or the connection's last request) is answered with
  ``connection: close`` and the close, as the full path does;
- the stored response has no Vary (its selection depends on nothing but the key), was a fresh
  hit, and is still fresh now (its age is recomputed: RFC 9111 §4.2.3);
- the store has not changed since (``CacheStore.generation``: any write, eviction or
  invalidation in this process, or for ``shared`` in any worker), the connection got the same
  certificate names (the 421 rules), and the entry was published less than ``REFRESH``
  seconds ago, so at least once a second the full path serves the key again: it refreshes the
  store's recency (LRU) and re-checks everything.

What the answer carries is built by the same functions: the stored fields, Age,
``Cache-Status`` from ``format_cache_status``, X-Cache, the app's own fields (Via, HSTS) and a
new X-Request-ID; the access log gets its line and the metrics their count.  One app's hot
hits are dropped with it on a reload.  Off for trace mode, ``server_timing``, routes with
middlewares, and the Redis store (whose changes on other machines nothing here can see).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.access_log import AccessLog, Exchange
from gateway.admin.metrics import Labels, Metrics
from gateway.cache.decisions import format_cache_status
from gateway.cache.fields import MAX_DELTA
from gateway.cache.stores import CacheStore
from gateway.cache.storing import StoredResponse
from gateway.headers import Headers

log = logging.getLogger("gateway.cache.hot")

# Request header fields that nothing in a fresh, Vary-less hit reads: not the cache rules
# (RFC 9111 §4: Cache-Control, Pragma, conditionals, Range and Authorization are absent), not
# validation (Via, body framing), not the request ID (X-Request-ID).  Anything else: full path.
INERT_FIELDS = frozenset(
    {
        b"host",
        b"user-agent",
        b"accept",
        b"accept-encoding",
        b"accept-language",
        b"connection",
        b"referer",
        b"cookie",
        b"dnt",
        b"origin",
        b"priority",
        b"upgrade-insecure-requests",
        b"sec-fetch-dest",
        b"sec-fetch-mode",
        b"sec-fetch-site",
        b"sec-fetch-user",
        b"sec-ch-ua",
        b"sec-ch-ua-mobile",
        b"sec-ch-ua-platform",
        b"sec-gpc",
    }
)
# How long a published answer is used before the full path serves its key again.
REFRESH = 1.0
# Bounds: past either, everything is dropped (the full path publishes again what is hot).
MAX_ENTRIES = 1024
MAX_BYTES = 32 * 1024 * 1024
HotKey = tuple[str | None, bytes, bytes]  # (TLS server name, Host, request target)


def plain_host(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The Host of a request whose header fields are all inert and hold exactly one Host
    (see the module docstring), else None."""
    host: bytes | None = None
    for name, value in headers:
        if name not in INERT_FIELDS:
            return None
        if name == b"host":
            if host is not None:
                return None
            host = value
    return host


@dataclass(slots=True)
class HotEntry:
    """A published answer: the bytes around Age/Cache-Status/X-Request-ID, and what its age
    and validity are computed from."""

    head: bytes  # status line and stored fields
    tail: bytes  # X-Cache and the app's own fields
    fields: Headers  # the stored fields again, for HTTP/2
    body: bytes
    status: int
    corrected_initial_age: float
    response_time: float
    lifetime: float
    heuristic: bool
    generation: int
    published: float  # time.monotonic()
    cert_names: tuple[str, ...] | None
    labels: Labels


# A hit's Cache-Status member, by whether its freshness is heuristic; ``% ttl`` completes it.
HIT = format_cache_status(hit=True, ttl=0).replace(b"ttl=0", b"ttl=%d")
HIT_HEURISTIC = format_cache_status(hit=True, ttl=0, detail="heuristic").replace(
    b"ttl=0", b"ttl=%d"
)


def field_lines(fields: Headers) -> bytes:
    return b"".join([name + b": " + value + b"\r\n" for name, value in fields])


class HotHits:
    """One app's published answers (see the module docstring)."""

    def __init__(
        self,
        store: CacheStore,
        extra_headers: Headers,
        access_log: AccessLog,
        metrics: Metrics,
        new_request_id: Callable[[], str],
        status_lines: dict[int, bytes],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.tail_fields: Headers = [(b"x-cache", b"HIT"), *extra_headers]
        self.tail = field_lines(self.tail_fields)
        self.access_log = access_log
        self.metrics = metrics
        self.new_request_id = new_request_id
        self.status_lines = status_lines
        self.clock = clock
        self.entries: dict[HotKey, HotEntry] = {}
        self.bytes = 0
        self.disabled = False

    # --- the full path hands over what it answered --------------------------------------------

    def publish(
        self, scope: Any, entry: StoredResponse, exchange: Exchange, labels: Labels
    ) -> None:
        """Keep the answer the full path just gave, if this request and entry qualify."""
        if (
            self.disabled
            or entry.vary
            or exchange.status != entry.status
            or exchange.aborted
            or scope["method"] != "GET"
            or scope["http_version"] not in ("1.1", "2")
            or "gateway.target" in scope
            or "gateway.upgrade" in scope
        ):
            return
        host = plain_host(scope["headers"])
        generation = self.store.generation()
        if host is None or generation is None:
            return
        query = scope["query_string"]
        target = scope["raw_path"] + b"?" + query if query else scope["raw_path"]
        size = len(entry.body)
        if self.bytes + size > MAX_BYTES or len(self.entries) >= MAX_ENTRIES:
            self.entries.clear()
            self.bytes = 0
        key = (scope.get("gateway.sni"), host, target)
        old = self.entries.get(key)
        if old is not None:
            self.bytes -= len(old.body)
        self.entries[key] = HotEntry(
            self.status_lines[entry.status] + field_lines(entry.headers),
            self.tail,
            entry.headers,
            entry.body,
            entry.status,
            entry.corrected_initial_age,
            entry.response_time,
            entry.freshness_lifetime,
            entry.heuristic,
            generation,
            time.monotonic(),
            scope.get("gateway.cert_names"),
            labels,
        )
        self.bytes += size

    def fail(self) -> None:
        """Stop answering (a bug, logged once with its traceback): the full path takes over."""
        log.exception("hot cache hits turned off after an error; the full path answers")
        self.entries.clear()
        self.bytes = 0
        self.disabled = True

    # --- the listener asks --------------------------------------------------------------------

    def serve(
        self,
        sni: str | None,
        cert_names: tuple[str, ...] | None,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
        started: float,
        *,
        method: str = "GET",
        close: bool = False,
    ) -> tuple[bytes, bytes] | None:
        """The HTTP/1.1 response (head, body) for a plain GET or HEAD on ``target``, or None:
        full path.  ``close``: the connection ends after it (the client asked, or its last
        request), which the head says as the full path's does."""
        hit = self._hit(sni, cert_names, target, headers, client, started, method, "1.1")
        if hit is None:
            return None
        hot, age, status, request_id, body = hit
        head = b"%sage: %d\r\ncache-status: %s\r\n%sx-request-id: %s\r\n%s\r\n" % (
            hot.head,
            age,
            status,
            hot.tail,
            request_id,
            b"connection: close\r\n" if close else b"",
        )
        return head, body

    def serve_fields(
        self,
        sni: str | None,
        cert_names: tuple[str, ...] | None,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
        started: float,
        *,
        method: str = "GET",
        max_body: int,
    ) -> tuple[int, Headers, bytes] | None:
        """The HTTP/2 response (status, fields, body) for a plain GET or HEAD on ``target``,
        the same fields ``serve`` writes, in the same order; or None: full path.  A body over
        ``max_body`` (what the client's flow-control windows let through now) is left to the
        full path, which can wait for the client's WINDOW_UPDATE."""
        hit = self._hit(sni, cert_names, target, headers, client, started, method, "2", max_body)
        if hit is None:
            return None
        hot, age, status, request_id, body = hit
        fields = [
            *hot.fields,
            (b"age", b"%d" % age),
            (b"cache-status", status),
            *self.tail_fields,
            (b"x-request-id", request_id),
        ]
        return hot.status, fields, body

    def _hit(
        self,
        sni: str | None,
        cert_names: tuple[str, ...] | None,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
        started: float,
        method: str,
        http_version: str,
        max_body: int | None = None,
    ) -> tuple[HotEntry, int, bytes, bytes, bytes] | None:
        """(entry, Age, Cache-Status, X-Request-ID, body) of a hot answer, logged and
        counted as the full path's, if the request's entry is still valid and fresh (see the
        module docstring); None: full path."""
        if not self.entries:
            return None
        host = plain_host(headers)
        if host is None:
            return None
        key = (sni, host, target)
        hot = self.entries.get(key)
        if hot is None:
            return None
        if (
            time.monotonic() - hot.published >= REFRESH
            or hot.generation != self.store.generation()
            or hot.cert_names != cert_names
        ):
            del self.entries[key]
            self.bytes -= len(hot.body)
            return None
        now = self.clock()
        age = hot.corrected_initial_age + max(0.0, now - hot.response_time)
        ttl = hot.lifetime - age
        if ttl <= 0:
            return None  # stale: the full path decides (revalidate, serve stale, refetch)
        # format_cache_status(hit=True, ttl=ttl, detail=...) with the constant parts made once.
        status = (HIT_HEURISTIC if hot.heuristic else HIT) % math.floor(ttl)
        body = b"" if method == "HEAD" else hot.body
        if max_body is not None and len(body) > max_body:
            return None
        request_id = self.new_request_id()
        exchange = Exchange(
            {
                "type": "http",
                "method": method,
                "http_version": http_version,
                "scheme": "https",
                "raw_path": target,
                "query_string": b"",
                "headers": headers,
                "client": client,
            }
        )
        exchange.started = started
        exchange.status = hot.status
        exchange.response_started = True
        exchange.bytes_sent = len(body)
        exchange.cache = "HIT"
        exchange.request_id = request_id
        self.access_log.write(exchange)
        self.metrics.observe(exchange, hot.labels)
        self.metrics.hot_hits += 1
        return hot, min(math.floor(age), MAX_DELTA), status, request_id.encode(), body
