"""``ResponseRecorder``: the ``send`` a forwarded response goes through on a caching route.

It sees the response start once and decides: swallow a 304 to the cache's own revalidation,
hold back a 5xx that a stale entry may replace (RFC 5861 §4), or pass the response on with
Cache-Status / X-Cache and, when it is storable (RFC 9111 §3), keep a copy of the body that
is stored once the upstream's body completed.  The client never waits for the copy.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.access_log import Exchange
from gateway.cache.coalescing import Flight
from gateway.cache.decisions import STALE_IF_ERROR_STATUSES, Decision, forwarded_cache_headers
from gateway.cache.storing import make_stored_response, why_not_storable
from gateway.cache.targeted import without_targeted
from gateway.headers import Headers
from gateway.tracing import store_text

if TYPE_CHECKING:
    from gateway.asgi import Message, Send
    from gateway.cache.layer import CacheLayer

log = logging.getLogger("gateway.cache")

# why_not_storable reasons that come from the request, not from the response.
REQUEST_REASONS = frozenset({"method", "request-no-store", "authorization"})

# A held-back 5xx body larger than this goes to the client instead of waiting for stale.
HELD_ERROR_MAX_BYTES = 256 * 1024


class ResponseRecorder:
    """The ``send`` wrapper for one forwarded GET/HEAD (see the module docstring).

    After the forward returned, ``not_modified_headers`` holds an intercepted 304's headers,
    ``held_start`` a held-back 5xx (``release_held`` sends it after all), and
    ``client_started`` says whether anything reached the client.
    """

    __slots__ = (
        "layer",
        "send",
        "exchange",
        "key",
        "decision",
        "request_headers",
        "request_time",
        "flight",
        "may_store",
        "intercept_304",
        "hold_errors",
        "status",
        "response_time",
        "stored_headers",
        "chunks",
        "size",
        "not_modified_headers",
        "held_start",
        "held_body",
        "held_bytes",
        "client_started",
    )

    def __init__(
        self,
        layer: CacheLayer,
        send: Send,
        exchange: Exchange,
        key: str,
        decision: Decision,
        request_headers: Headers,
        request_time: float,
        flight: Flight | None,
        *,
        may_store: bool,
        intercept_304: bool,
        hold_errors: bool,
    ) -> None:
        self.layer = layer
        self.send = send
        self.exchange = exchange
        self.key = key
        self.decision = decision
        self.request_headers = request_headers
        self.request_time = request_time
        self.flight = flight
        self.may_store = may_store
        self.intercept_304 = intercept_304
        self.hold_errors = hold_errors
        self.status = 0
        self.response_time = request_time
        self.stored_headers: Headers = []
        self.chunks: list[bytes] | None = None  # the body copy, while it may still be stored
        self.size = 0
        self.not_modified_headers: Headers | None = None
        self.held_start: Message | None = None
        self.held_body: list[Message] = []
        self.held_bytes = 0
        self.client_started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self._start(message)
            return
        if self.held_start is not None:
            self.held_body.append(message)
            self.held_bytes += len(message.get("body", b""))
            if self.held_bytes > HELD_ERROR_MAX_BYTES:
                # Too big to keep waiting for a verdict: the client gets the upstream's error.
                await self.release_held()
            return
        if self.not_modified_headers is not None:
            return  # the (empty) body of a 304 to our own revalidation
        if self.chunks is not None:
            await self._copy(message)
        await self.send(message)

    async def _start(self, message: Message) -> None:
        layer = self.layer
        status: int = message["status"]
        headers: Headers = message["headers"]
        self.status = status
        self.response_time = layer.clock()
        # Only the upstream's headers: the gateway's own (Via, HSTS) are added after us.
        upstream_headers = headers
        if status == 304 and self.intercept_304:
            self.not_modified_headers = upstream_headers
            return
        if self.hold_errors and status in STALE_IF_ERROR_STATUSES:
            self.held_start = message
            return
        stored = False
        policy = layer.store.policy
        if self.may_store:
            reason = why_not_storable(
                "GET",
                status,
                self.request_headers,
                upstream_headers,
                response_time=self.response_time,
                policy=policy,
            )
            if reason is None and declared_length(upstream_headers) > layer.store.max_entry_bytes:
                reason = "too-large"
            if self.exchange.trace is not None:
                self.exchange.trace.add("gateway.cache.storing", store_text(status, reason))
            if reason is None:
                self.stored_headers = list(upstream_headers)  # Cache-Status is added below
                self.chunks = []
                stored = True
            else:
                log.debug("GET %s: not stored (%s)", self.key, reason)
                # Only what the response says about itself makes the key hit-for-pass: this
                # request's own Authorization or no-store says nothing about the next one.
                self._give_up(pass_key=reason not in REQUEST_REASONS)
        # Our targeted fields (CDN-Cache-Control) were for this cache only (RFC 9213).
        message["headers"] = headers = without_targeted(headers, policy.targeted_fields)
        cache_headers = forwarded_cache_headers(self.decision, status, stored=stored)
        headers.extend(cache_headers)
        self.exchange.cache = cache_headers[1][1].decode("ascii")
        self.client_started = True
        await self.send(message)

    async def _copy(self, message: Message) -> None:
        body: bytes = message.get("body", b"")
        self.size += len(body)
        chunks = self.chunks
        assert chunks is not None
        if self.size > self.layer.store.max_entry_bytes:
            log.debug("GET %s: not stored (larger than max_entry_bytes)", self.key)
            self.chunks = None
            self._give_up()
            return
        if body:
            chunks.append(body)
        if not message.get("more_body", False):
            # The upstream's body is complete: store it before the client's last chunk goes
            # out, so waiting requests are served as early as possible.
            self.chunks = None
            layer = self.layer
            entry = make_stored_response(
                self.status,
                self.stored_headers,
                b"".join(chunks),
                self.request_headers,
                self.request_time,
                self.response_time,
                policy=layer.store.policy,
            )
            if await layer.store.put(self.key, entry):
                layer.passes.discard(self.key)
                log.debug("GET %s: stored %d bytes", self.key, len(entry.body))
            if self.flight is not None:
                self.flight.release()

    def _give_up(self, *, pass_key: bool = True) -> None:
        """The response will not be stored: let waiting requests go upstream now and, when
        ``pass_key``, pass this key by the cache for a while (not for a 5xx: an outage is no
        reason to let a herd of misses through)."""
        if pass_key and self.status < 500:
            self.layer.passes.add(self.key)
        if self.flight is not None:
            self.flight.release()

    async def release_held(self) -> None:
        """Send the held-back 5xx (start and body) to the client after all."""
        start, self.held_start = self.held_start, None
        if start is None:
            return
        cache_headers = forwarded_cache_headers(self.decision, self.status)
        targets = self.layer.store.policy.targeted_fields
        start["headers"] = without_targeted(start["headers"], targets) + cache_headers
        self.exchange.cache = cache_headers[1][1].decode("ascii")
        self.client_started = True
        await self.send(start)
        body, self.held_body = self.held_body, []
        for message in body:
            await self.send(message)


def declared_length(headers: Headers) -> int:
    """The Content-Length the upstream declared (0 when none or invalid)."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0
