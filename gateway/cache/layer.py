"""``CacheLayer``: the response cache wired around the proxy's forwarding, in asyncio.

Theory of operation.  The cache wraps the proxy handler of every caching route
(``CacheLayer.wrap``): ``handle`` gets each ``Request`` together with the proxy's
``forward(request, send, request_headers)`` coroutine, which streams the upstream's response
to ``send`` as raw ASGI messages and raises ``UpstreamError`` when it fails before the
response started.  Everything the layer sends goes to ``request.send``, the app's outer
wrapper, which adds the gateway's own headers and records status and bytes: what the layer
sees and stores is only ever the upstream's response.  The layer decides with the
pure rules (``ResponseCache.lookup``) and then either

- answers itself: a fresh hit, a 304 to the client's conditional, a stale answer while one
  background task refreshes the entry (RFC 5861 §3), or 504 for only-if-cached on a miss;
  two ASGI messages, no task, nothing parsed beyond what the stored entry precomputed;
- forwards through a ``ResponseRecorder`` (``recording``), the ``send`` wrapper that adds
  Cache-Status / X-Cache, tees a storable body (up to ``max_entry_bytes``) without delaying
  the client and stores it once it is complete, swallows the upstream's 304 to our
  revalidation, and holds back a 5xx start when a stale entry might replace it
  (stale-if-error, RFC 5861 §4);
- or, for unsafe methods, forwards and invalidates what a 2xx/3xx changed (RFC 9111 §4.4).

Concurrent GET misses on one key are collapsed (Nginx ``proxy_cache_lock``): one leader goes
upstream, the others wait and look up again.  The leader lets them go as soon as it knows the
response will not be stored, and such a key is then remembered for a while ("hit-for-pass",
as in Varnish) so later misses on it do not wait at all.  A waiter waits at most
``lock_timeout`` (LOCK_TIMEOUT, half a second rather than Nginx's 5 s): enough for the
upstream to answer a herd of requests for a popular page once, short enough that identical
requests to a slow or long-polling endpoint, whose cacheability is not known yet, never
queue behind each other noticeably.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable

from gateway.access_log import Exchange
from gateway.asgi import Message, Receive, Scope
from gateway.background import Background
from gateway.cache.coalescing import Flight, HitForPass
from gateway.cache.conditional import freshen, revalidation_request_headers
from gateway.cache.decisions import (
    Action,
    CachedAnswer,
    Decision,
    answer_revalidated,
    answer_stale_on_error,
    can_serve_stale_on_error,
    forwarded_cache_headers,
)
from gateway.cache.hot import plain_host
from gateway.cache.keys import invalidation_keys, primary_key
from gateway.cache.recording import ResponseRecorder
from gateway.cache.stores import CacheStore, open_store
from gateway.cache.targeted import without_targeted
from gateway.config import CacheSettings
from gateway.errors import GatewayError, UpstreamError
from gateway.headers import Headers
from gateway.request import Forward, Handler, Request
from gateway.tracing import describe_decision, pass_text

log = logging.getLogger("gateway.cache")

# X-Cache (and the access log's cache=) for each answer the cache makes itself.
_ANSWER_LABELS = {
    Action.HIT: "HIT",
    Action.NOT_MODIFIED: "HIT",
    Action.STALE_WHILE_REVALIDATE: "STALE",
    Action.ONLY_IF_CACHED_MISS: "MISS",
}
# The decisions for requests the cache stays out of without a lookup.
_OTHER_METHOD = Decision(Action.BYPASS, fwd="method", detail="method")
_WITH_BODY = Decision(Action.BYPASS, fwd="bypass", detail="body")
# The longest a request waits for another one's upstream fetch of the same key.
LOCK_TIMEOUT = 0.5
# How long a key whose response was not storable skips request coalescing.
HIT_FOR_PASS_SECONDS = 60.0
# Past this many remembered pass decisions, all are forgotten (the full path adds them back).
MAX_PASSED = 4096


class CacheLayer:
    """The shared cache in front of the proxy's forwarding (see the module docstring).

    ``clock`` is the ``time.time`` the RFC 9111 age arithmetic runs on (tests pass their own).
    """

    def __init__(
        self,
        settings: CacheSettings,
        *,
        clock: Callable[[], float] = time.time,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> None:
        self.store: CacheStore = open_store(settings)
        self.coalescer = self.store.coalescer(lock_timeout)
        self.clock = clock
        self.passes = HitForPass(clock, HIT_FOR_PASS_SECONDS)
        # Plain GETs' pass decisions and the store generation they were made at (express lane).
        self._passed: dict[str, tuple[Decision, int]] = {}
        # Background refreshes (stale-while-revalidate); a reference keeps each task alive.
        self._refreshes = Background()

    def wrap(self, forward: Forward) -> Handler:
        """The handler of a caching route: this cache in front of ``forward`` (a partial, not
        a wrapping coroutine: one frame less per request)."""
        return functools.partial(self.handle, forward=forward)

    async def handle(self, request: Request, forward: Forward) -> None:
        method = request.method
        if method != "GET" and method != "HEAD":
            await self._forward_unsafe(request, forward)
            return
        key = _key(request)
        facts = request.facts
        if facts.content_length or facts.chunked:
            # A GET with a body has no defined meaning (RFC 9110 §9.3.1): the cache stays out.
            if request.exchange.trace is not None:
                request.exchange.trace.add("gateway.cache.layer", describe_decision(_WITH_BODY))
            await self._fetch(request, forward, key, _WITH_BODY)
            return
        request_headers = request.headers
        decision = await self.store.lookup(key, method, request_headers, self.clock())
        if request.exchange.trace is not None:
            request.exchange.trace.add("gateway.cache.decisions", describe_decision(decision))
        if decision.answer is not None:
            await self._serve(request, forward, key, decision)
            return
        log.debug("%s %s: %s (%s)", method, key, decision.action.value, decision.fwd)
        if decision.entry is None and (
            method == "HEAD" or decision.action is Action.BYPASS or key in self.passes
        ):
            if method == "GET" and decision.action is not Action.BYPASS:
                self._remember_pass(key, decision, request_headers)
            await self._pass(request, forward, decision)
            return
        if method == "HEAD" or decision.action is Action.BYPASS or key in self.passes:
            # None of these waits for another request's fetch: HEAD and BYPASS responses are
            # never stored, and this key's response was not storable a moment ago.
            await self._fetch(request, forward, key, decision)
            return
        flight = self.coalescer.try_lead(key)
        if flight is None:
            await self.coalescer.wait(key)
            decision = await self.store.lookup(key, method, request_headers, self.clock())
            if decision.answer is not None:
                await self._serve(request, forward, key, decision)
                return
            # The leader's response was not stored: go upstream ourselves, uncoalesced.
            await self._fetch(request, forward, key, decision)
            return
        try:
            await self._fetch(request, forward, key, decision, flight)
        finally:
            flight.release()  # also on failure or cancellation: never strand the waiters

    # --- answering from the cache -------------------------------------------------------------

    async def _serve(
        self, request: Request, forward: Forward, key: str, decision: Decision
    ) -> None:
        """Send the answer the lookup made (the hot path: two ASGI messages, no task), and
        start the background refresh a stale-while-revalidate answer calls for."""
        assert decision.answer is not None
        if decision.action is Action.HIT and decision.detail is None:
            request.exchange.fresh_hit = decision.entry  # GatewayApp may publish it (cache.hot)
        await self._send_answer(request, decision.answer, _ANSWER_LABELS[decision.action])
        if decision.action is Action.STALE_WHILE_REVALIDATE:
            self._start_refresh(request, forward, key, decision)
        log.debug("%s %s: %s", request.method, key, decision.action.value)

    async def _send_answer(self, request: Request, answer: CachedAnswer, label: str) -> None:
        send = request.send
        request.exchange.cache = label
        await send(
            {"type": "http.response.start", "status": answer.status, "headers": answer.headers}
        )
        await send({"type": "http.response.body", "body": answer.body})

    # --- forwarding ---------------------------------------------------------------------------

    async def _pass(self, request: Request, forward: Forward, decision: Decision) -> None:
        """Forward with nothing to store, revalidate or stand in for (HEAD, BYPASS, or a key
        whose response was not storable a moment ago: Varnish's hit-for-pass), so only the
        cache headers are added.  Most API traffic takes this path: it must stay cheap."""
        request.exchange.cache = "BYPASS" if decision.action is Action.BYPASS else "MISS"
        if request.exchange.trace is not None and decision.action is not Action.BYPASS:
            request.exchange.trace.add("gateway.cache.layer", pass_text(request.method))
        send = request.send

        async def send_with_cache_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = self.pass_headers(
                    message["headers"], decision, message["status"]
                )
            await send(message)

        await forward(request, send_with_cache_headers, None)

    def pass_headers(self, headers: Headers, decision: Decision, status: int) -> Headers:
        """A passed response's fields: without our targeted fields (RFC 9213), with
        Cache-Status and X-Cache."""
        headers = without_targeted(headers, self.store.policy.targeted_fields)
        headers.extend(forwarded_cache_headers(decision, status))
        return headers

    # --- the express lane (gateway.express) -----------------------------------------------------

    def _remember_pass(self, key: str, decision: Decision, request_headers: Headers) -> None:
        """A plain GET was passed by with ``decision``: the same request will be, until the
        store changes (any write, eviction or invalidation moves its generation)."""
        generation = self.store.generation()
        if generation is None or plain_host(request_headers) is None:
            return
        if len(self._passed) >= MAX_PASSED and key not in self._passed:
            self._passed.clear()
        self._passed[key] = (decision, generation)

    def express_decision(self, scope: Scope, host: str) -> Decision | None:
        """The decision ``handle`` would pass a GET for ``scope`` (validated: its ``host``)
        upstream with, or None when it might do anything else: the request is plain (its
        fields cannot change the lookup: ``cache.hot.INERT_FIELDS``), the key hit-for-pass
        and the store unchanged since ``handle`` passed the same key."""
        if not self._passed or plain_host(scope["headers"]) is None:
            return None
        key = primary_key("https", host, scope["raw_path"], scope["query_string"])
        passed = self._passed.get(key)
        if passed is None or passed[1] != self.store.generation() or key not in self.passes:
            return None
        return passed[0]

    async def _fetch(
        self,
        request: Request,
        forward: Forward,
        key: str,
        decision: Decision,
        flight: Flight | None = None,
    ) -> None:
        """Forward a GET/HEAD the cache did not answer; store, revalidate or stand in with a
        stale entry as the upstream's response allows."""
        method, request_headers = request.method, request.headers
        send, exchange = request.send, request.exchange
        request_time = self.clock()
        entry = decision.entry
        revalidating = decision.action is Action.REVALIDATE and method == "GET"
        stale_candidate = entry is not None and can_serve_stale_on_error(
            entry, request_headers, request_time
        )
        recorder = ResponseRecorder(
            self,
            send,
            exchange,
            key,
            decision,
            request_headers,
            request_time,
            flight,
            may_store=method == "GET" and decision.action is not Action.BYPASS,
            intercept_304=revalidating,
            hold_errors=stale_candidate,
        )
        upstream_headers = (
            revalidation_request_headers(request_headers, entry)
            if revalidating and entry is not None
            else None
        )
        try:
            await forward(request, recorder, upstream_headers)
        except UpstreamError as exc:
            if recorder.client_started:
                raise
            # Nothing reached the client: the app may still send its error page if no stale
            # answer stands in.
            answer = (
                answer_stale_on_error(decision, method, request_headers, self.clock())
                if stale_candidate
                else None
            )
            if answer is None:
                raise
            log.info("%s %s: serving stale (stale-if-error): %s", method, key, exc.message)
            await self._send_answer(request, answer, "STALE")
            return

        if recorder.not_modified_headers is not None and entry is not None:
            fresh = freshen(
                entry, recorder.not_modified_headers, request_time, recorder.response_time
            )
            if fresh is not None:
                await self.store.put(key, fresh)
                if flight is not None:
                    flight.release()
                answer = answer_revalidated(decision, fresh, method, request_headers, self.clock())
                log.debug("%s %s: revalidated (304)", method, key)
                await self._send_answer(request, answer, "REVALIDATED")
                return
            # The 304 is not about what we store (RFC 9111 §4.3.4): fetch it anew, unconditionally.
            log.debug("%s %s: 304 does not match the stored response; refetching", method, key)
            refetch = Decision(Action.MISS, entry=None, fwd=decision.fwd)
            await self._fetch(request, forward, key, refetch, flight)
            return

        if recorder.held_start is not None:
            answer = answer_stale_on_error(
                decision, method, request_headers, self.clock(), fwd_status=recorder.status
            )
            if answer is not None:
                log.info(
                    "%s %s: serving stale (stale-if-error) for upstream %d",
                    method,
                    key,
                    recorder.status,
                )
                await self._send_answer(request, answer, "STALE")
            else:
                await recorder.release_held()

    async def _forward_unsafe(self, request: Request, forward: Forward) -> None:
        """Any method but GET/HEAD: never cached; a 2xx/3xx to an unsafe one invalidates the
        target and same-origin Location/Content-Location (RFC 9111 §4.4)."""
        key = _key(request)
        method, send = request.method, request.send
        targets = self.store.policy.targeted_fields

        async def invalidating_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: Headers = without_targeted(message["headers"], targets)  # RFC 9213
                message["headers"] = headers
                for stale in invalidation_keys(method, message["status"], key, headers):
                    if await self.store.invalidate(stale):
                        log.debug("%s %s: invalidated %s", method, key, stale)
                headers.extend(forwarded_cache_headers(_OTHER_METHOD, message["status"]))
            await send(message)

        request.exchange.cache = "BYPASS"
        if request.exchange.trace is not None:
            request.exchange.trace.add("gateway.cache.layer", describe_decision(_OTHER_METHOD))
        await forward(request, invalidating_send, None)

    # --- stale-while-revalidate ---------------------------------------------------------------

    def _start_refresh(
        self, request: Request, forward: Forward, key: str, decision: Decision
    ) -> None:
        flight = self.coalescer.try_lead(key)
        if flight is None:
            return  # a refresh (or a miss) for this key is already upstream
        self._refreshes.spawn(self._refresh(request, forward, key, decision, flight))

    async def _refresh(
        self,
        request: Request,
        forward: Forward,
        key: str,
        decision: Decision,
        flight: Flight,
    ) -> None:
        """Fetch ``key`` again in the background and store the result; the client already has
        its stale answer, so any failure is only logged."""
        entry = decision.entry
        # A copy: the client's scope belongs to its (finished) request cycle.  Always a GET,
        # also when a HEAD found the entry stale.
        scope = dict(request.scope)
        scope["method"] = "GET"
        request_headers: Headers = list(request.headers)
        scope["headers"] = request_headers
        exchange = Exchange(scope)
        background = dataclasses.replace(
            request, scope=scope, receive=_empty_request(), send=_discard, exchange=exchange
        )
        revalidating = entry is not None and entry.has_validator
        refresh_decision = Decision(
            Action.REVALIDATE if revalidating else Action.MISS, entry=entry, fwd="stale"
        )
        recorder = ResponseRecorder(
            self,
            _discard,
            exchange,
            key,
            refresh_decision,
            request_headers,
            self.clock(),
            flight,
            may_store=True,
            intercept_304=revalidating,
            hold_errors=False,
        )
        upstream_headers = (
            revalidation_request_headers(request_headers, entry) if entry is not None else None
        )
        try:
            await forward(background, recorder, upstream_headers)
            if recorder.not_modified_headers is not None and entry is not None:
                fresh = freshen(
                    entry,
                    recorder.not_modified_headers,
                    recorder.request_time,
                    recorder.response_time,
                )
                if fresh is not None:
                    await self.store.put(key, fresh)
                    self.passes.discard(key)
            log.debug("GET %s: background refresh done (%d)", key, recorder.status)
        except GatewayError as exc:
            log.info("GET %s: background refresh failed: %s", key, exc.message)
        except Exception:  # noqa: BLE001 - a refresh nobody awaits must not die unreported
            log.warning("GET %s: background refresh crashed", key, exc_info=True)
        finally:
            flight.release()


def _key(request: Request) -> str:
    """The primary cache key: the target URI in the form routing used (RFC 9111 §2)."""
    scope = request.scope
    return primary_key("https", request.facts.host, scope["raw_path"], scope["query_string"])


async def _discard(message: Message) -> None:
    """The client of a background refresh: nobody."""


def _empty_request() -> Receive:
    """``receive`` for a request made by the cache itself: an empty body, then nothing, as
    from a client that stays connected until the response is complete."""
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}
        never: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        return await never

    return receive
