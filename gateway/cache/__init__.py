"""The shared response cache (RFC 9111, with RFC 5861 stale-* and RFC 9211 Cache-Status).

The protocol rules are pure and I/O-free, one concern per module:

- ``fields``       Cache-Control directives, HTTP-dates, header access (§5.2, RFC 9110 §5.6.7)
- ``freshness``    freshness lifetime and age (§4.2.1, §4.2.3)
- ``keys``         primary key, Vary selection, invalidation targets (§2, §4.1, §4.4)
- ``storing``      what may be stored, and the precomputed ``StoredResponse`` (§3)
- ``conditional``  client conditionals, revalidation and freshening by a 304 (§4.3)
- ``decisions``    the lookup decision and the answers the cache makes itself (§4, RFC 9211)
- ``store``        the bounded LRU storage; ``coalescing`` collapses concurrent misses
- ``stores/``      where entries live, by ``[cache] store``: ``memory`` (a ``ResponseCache`` per
                   process), ``shared`` (LMDB, all workers), ``redis://`` (several machines);
                   ``codec`` is the byte form of an entry outside the process

``layer`` is the thin asyncio wiring around the proxy's forwarding (``CacheLayer``), with
``recording`` the ``send`` wrapper that tees, holds back or swallows a forwarded response.
Headers are ``[(lowercase name, value)]`` byte pairs; times are ``time.time()`` floats passed
in by the caller, so tests control the clock.

Keys and lookup
    primary_key(scheme, host, raw_path, query) -> str     canonical target URI (§2)
    ResponseCache(max_bytes, max_entry_bytes), or ResponseCache.from_settings(settings.cache)
    cache.lookup(key, method, request_headers, now) -> Decision
    Decision.action: Action.HIT | NOT_MODIFIED | STALE_WHILE_REVALIDATE | ONLY_IF_CACHED_MISS
                     (``decision.answer`` is the CachedAnswer(status, headers, body) to send)
                   | REVALIDATE | MISS | BYPASS  (forward; ``decision.fwd`` says why, RFC 9211)

Storing a forwarded response
    why_not_storable(method, status, request_headers, response_headers) -> str | None
    is_storable(...) -> bool
    make_stored_response(status, response_headers, body, request_headers,
                         request_time, response_time) -> StoredResponse
    cache.put(key, entry) -> bool        False when over max_entry_bytes / max_bytes
    forwarded_cache_headers(decision, upstream_status, stored=...) -> Cache-Status, X-Cache

Revalidation, stale responses, invalidation
    revalidation_request_headers(request_headers, entry)  client's validators -> the entry's
    freshen(entry, headers_304, request_time, response_time) -> StoredResponse | None
    answer_revalidated(decision, fresh_entry, method, request_headers, now) -> CachedAnswer
    answer_stale_on_error(decision, method, request_headers, now, fwd_status=) -> CachedAnswer|None
    STALE_IF_ERROR_STATUSES                               the 5xx that stale-if-error may hide
    invalidation_keys(method, status, key, response_headers) -> list[str]; cache.invalidate(key)

Coalescing
    Coalescer(timeout); ``async with coalescer.lead_or_wait(key) as leader: ...``;
    coalescer.try_lead(key) -> Flight | None; flight.release()
    HitForPass(clock, ttl): keys whose response was not storable skip the wait for a while

Wiring, per request (GET/HEAD on a route with ``cache = true``; ``layer.CacheLayer`` does this):
    d = cache.lookup(key, method, headers, now)
    answer -> send d.answer; on STALE_WHILE_REVALIDATE also start one background refresh
              (``coalescer.try_lead(key)``; skip it when None).
    forward -> for GET MISS/REVALIDATE, ``async with coalescer.lead_or_wait(key)``; a waiter
              looks up again and, on a miss, forwards itself.  REVALIDATE sends
              ``revalidation_request_headers``; a 304 goes through ``freshen`` + ``put`` +
              ``answer_revalidated``.  Any other response: if ``is_storable``, buffer up to
              ``cache.max_entry_bytes`` while streaming it, then ``make_stored_response`` +
              ``put``; add ``forwarded_cache_headers``.  On an upstream failure or a
              STALE_IF_ERROR_STATUSES status, try ``answer_stale_on_error`` first.
    unsafe methods -> on a 2xx/3xx, ``cache.invalidate`` each of ``invalidation_keys``.

Building blocks (used by the above, exported for tests and tools): parse_cache_control,
request_cache_control, CacheControl, freshness_lifetime, corrected_initial_age, current_age,
parse_http_date, vary_names, vary_key, not_modified, conditional_request_headers,
answer_from_entry, can_serve_stale_on_error, bypass_reason, lookup_decision, format_cache_status.
"""

from __future__ import annotations

from gateway.cache.coalescing import Coalescer, Flight, HitForPass
from gateway.cache.conditional import (
    conditional_request_headers,
    freshen,
    not_modified,
    revalidation_request_headers,
)
from gateway.cache.decisions import (
    STALE_IF_ERROR_STATUSES,
    Action,
    CachedAnswer,
    Decision,
    answer_from_entry,
    answer_revalidated,
    answer_stale_on_error,
    bypass_reason,
    can_serve_stale_on_error,
    format_cache_status,
    forwarded_cache_headers,
    lookup_decision,
    request_bypasses_cache,
)
from gateway.cache.fields import (
    CacheControl,
    parse_cache_control,
    parse_http_date,
    request_cache_control,
)
from gateway.cache.freshness import corrected_initial_age, current_age, freshness_lifetime
from gateway.cache.keys import invalidation_keys, primary_key, vary_key, vary_names
from gateway.cache.store import ResponseCache
from gateway.cache.storing import (
    CACHEABLE_STATUSES,
    StoredResponse,
    is_storable,
    make_stored_response,
    why_not_storable,
)

__all__ = [
    "CACHEABLE_STATUSES",
    "STALE_IF_ERROR_STATUSES",
    "Action",
    "CacheControl",
    "CachedAnswer",
    "Coalescer",
    "Decision",
    "Flight",
    "HitForPass",
    "ResponseCache",
    "StoredResponse",
    "answer_from_entry",
    "answer_revalidated",
    "answer_stale_on_error",
    "bypass_reason",
    "can_serve_stale_on_error",
    "conditional_request_headers",
    "corrected_initial_age",
    "current_age",
    "format_cache_status",
    "forwarded_cache_headers",
    "freshen",
    "freshness_lifetime",
    "invalidation_keys",
    "is_storable",
    "lookup_decision",
    "make_stored_response",
    "not_modified",
    "parse_cache_control",
    "parse_http_date",
    "primary_key",
    "request_bypasses_cache",
    "request_cache_control",
    "revalidation_request_headers",
    "vary_key",
    "vary_names",
    "why_not_storable",
]
