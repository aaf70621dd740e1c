"""What the cache does with a request, and the responses it makes itself.

``lookup_decision`` turns (selected entry, request, now) into a ``Decision``: serve fresh
(§4.2), serve stale where allowed (§4.2.4, RFC 5861), revalidate (§4.3), miss or bypass.
The ``answer_*`` functions build the ``CachedAnswer`` sent instead of the upstream's
response: with Age (§5.1), Cache-Status (RFC 9211) and X-Cache; ``forwarded_cache_headers``
adds the latter two to a response that did come from the upstream.
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass

from gateway.cache.conditional import not_modified
from gateway.cache.fields import MAX_DELTA, HeaderPairs, has_header, request_cache_control
from gateway.cache.freshness import current_age
from gateway.cache.ranges import answer_range
from gateway.cache.storing import StoredResponse
from gateway.headers import Headers

CACHE_NAME = "gateway"  # the cache's identifier in Cache-Status (RFC 9211 §2)
# RFC 5861 §4: the upstream answers that stale-if-error may hide.
STALE_IF_ERROR_STATUSES = frozenset({500, 502, 503, 504})
CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
# RFC 9110 §15.4.5: what a 304 carries (Last-Modified helps clients without an ETag).
_NOT_MODIFIED_FIELDS = frozenset(
    {
        b"cache-control",
        b"content-location",
        b"date",
        b"etag",
        b"expires",
        b"last-modified",
        b"vary",
        b"cache-status",
    }
)
# Request fields that keep the cache out (see ``bypass_reason``): preconditions only the
# origin evaluates (RFC 9111 §4.3.2).
_BYPASS_FIELDS = {
    b"if-match": "precondition",
    b"if-unmodified-since": "precondition",
}
# What a Range request may get from the cache: a stored response used as it is.  Anything
# that would go upstream with the Range (miss, revalidation, background refresh) bypasses
# the cache instead, so a 206 from the upstream is never mistaken for the whole response.
_RANGE_SERVED = frozenset({"hit", "not-modified", "only-if-cached"})


class Action(enum.Enum):
    """What the proxy does with a request, as decided by ``lookup_decision``."""

    HIT = "hit"  # answer ``decision.answer``: a usable stored response
    NOT_MODIFIED = "not-modified"  # answer ``decision.answer``: 304 to the client's conditional
    STALE_WHILE_REVALIDATE = "swr"  # answer ``decision.answer``, then refresh in the background
    ONLY_IF_CACHED_MISS = "only-if-cached"  # answer ``decision.answer``: 504 (RFC 9111 §5.2.1.7)
    REVALIDATE = "revalidate"  # forward with revalidation_request_headers(entry)
    MISS = "miss"  # forward; store the response if storable
    BYPASS = "bypass"  # forward untouched; never store


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A response made by the cache without (or instead of) the upstream's."""

    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a lookup.  ``answer`` is set exactly when the cache answers itself
    (HIT, NOT_MODIFIED, STALE_WHILE_REVALIDATE, ONLY_IF_CACHED_MISS); ``fwd`` is the RFC 9211
    reason when the request goes upstream.  ``entry`` is the selected stored response, also
    on MISS when it is stale without a validator (it may still serve stale-if-error)."""

    action: Action
    entry: StoredResponse | None = None
    age: float = 0.0
    answer: CachedAnswer | None = None
    fwd: str | None = None
    detail: str | None = None


def format_cache_status(
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    stored: bool = False,
    collapsed: bool = False,
    ttl: float | None = None,
    detail: str | None = None,
) -> bytes:
    """Our member of the Cache-Status list (RFC 9211 §2), e.g. ``gateway; hit; ttl=42``."""
    parts = [CACHE_NAME]
    if hit:
        parts.append("hit")
    if fwd is not None:
        parts.append(f"fwd={fwd}")
    if fwd_status is not None:
        parts.append(f"fwd-status={fwd_status}")
    if stored:
        parts.append("stored")
    if collapsed:
        parts.append("collapsed")
    if ttl is not None:
        parts.append(f"ttl={math.floor(ttl)}")
    if detail is not None:
        parts.append(f"detail={detail}")
    return "; ".join(parts).encode("ascii")


def answer_from_entry(
    entry: StoredResponse,
    method: str,
    request_headers: HeaderPairs,
    age: float,
    *,
    cache_status: bytes,
    x_cache: bytes,
) -> CachedAnswer:
    """The response sent from ``entry`` (RFC 9111 §4): stored headers plus Age (§5.1),
    Cache-Status (RFC 9211, appended after any upstream members) and X-Cache; a 304 with the
    RFC 9110 §15.4.5 fields when the client's conditional matches; no body for HEAD."""
    ours = [
        (b"age", str(min(int(age), MAX_DELTA)).encode("ascii")),
        (b"cache-status", cache_status),
        (b"x-cache", x_cache),
    ]
    if not_modified(entry, request_headers):
        kept = [(n, v) for n, v in entry.headers if n in _NOT_MODIFIED_FIELDS]
        return CachedAnswer(304, kept + ours, b"")
    if method == "GET" and has_header(request_headers, b"range"):
        # Preconditions first, then Range (RFC 9110 §13.2.2); HEAD ignores Range (§14.2).
        partial = answer_range(entry, request_headers)
        if partial is not None:
            status, headers, body = partial
            return CachedAnswer(status, headers + ours, body)
    return CachedAnswer(entry.status, entry.headers + ours, b"" if method == "HEAD" else entry.body)


def bypass_reason(method: str, request_headers: HeaderPairs) -> str | None:
    """Why the cache stays out of this request entirely (neither serves nor stores), or None.

    Non-GET/HEAD methods; ``Cache-Control: no-store`` (RFC 9111 §5.2.1.5, stricter than
    required); If-Match/If-Unmodified-Since, which only the origin can evaluate (RFC 9111
    §4.3.2).  A Range is served from a usable stored response (see ``lookup_decision``).
    """
    if method not in CACHEABLE_METHODS:
        return "method"
    for name, _ in request_headers:
        if name in _BYPASS_FIELDS:
            return _BYPASS_FIELDS[name]
    if request_cache_control(request_headers).no_store:
        return "no-store"
    return None


def request_bypasses_cache(method: str, request_headers: HeaderPairs) -> bool:
    """``bypass_reason(...) is not None``."""
    return bypass_reason(method, request_headers) is not None


def _gateway_timeout() -> CachedAnswer:
    status = format_cache_status(detail="only-if-cached")
    headers = [(b"content-length", b"0"), (b"cache-status", status), (b"x-cache", b"MISS")]
    return CachedAnswer(504, headers, b"")


def lookup_decision(
    entry: StoredResponse | None,
    method: str,
    request_headers: HeaderPairs,
    now: float,
    *,
    miss: str = "uri-miss",
) -> Decision:
    """Decide how to handle a request given the selected stored response (RFC 9111 §4).

    A stored response is used when fresh (§4.2) and the request allows it (no-cache, max-age,
    min-fresh, §5.2.1), or stale within the request's max-stale when the response does not
    forbid it (§4.2.4; s-maxage implies proxy-revalidate, §5.2.2.10).  Otherwise, within
    stale-while-revalidate it is served while refreshing (RFC 5861 §3); failing that it is
    revalidated when it has a validator (§4.3.1), else the request is a miss.  ``miss`` is the
    RFC 9211 fwd reason when there is no entry ("uri-miss" or "vary-miss").

    The origin's explicit stale-while-revalidate is honoured even with s-maxage: the response
    grants it in the same breath, and it is what CDNs do with ``s-maxage=N, swr=M``.
    """
    reason = bypass_reason(method, request_headers)
    if reason is not None:
        return Decision(
            Action.BYPASS, fwd="method" if reason == "method" else "bypass", detail=reason
        )
    decision = _decide(entry, method, request_headers, now, miss)
    if (
        method == "GET"
        and decision.action.value not in _RANGE_SERVED
        and has_header(request_headers, b"range")
    ):
        return Decision(Action.BYPASS, fwd="bypass", detail="range")
    return decision


def _decide(
    entry: StoredResponse | None,
    method: str,
    request_headers: HeaderPairs,
    now: float,
    miss: str,
) -> Decision:
    request = request_cache_control(request_headers)
    if entry is None:
        if request.only_if_cached:
            return Decision(Action.ONLY_IF_CACHED_MISS, answer=_gateway_timeout())
        return Decision(Action.MISS, fwd=miss)

    age = current_age(entry, now)
    lifetime = entry.freshness_lifetime
    staleness = age - lifetime  # fresh while negative: lifetime > age (§4.2)
    response = entry.cache_control
    request_allows = (
        not request.no_cache
        and (request.max_age is None or age <= request.max_age)
        and (request.min_fresh is None or lifetime - age >= request.min_fresh)
    )
    if request_allows and not response.no_cache:
        if staleness < 0:
            answer = answer_from_entry(
                entry,
                method,
                request_headers,
                age,
                cache_status=format_cache_status(
                    hit=True, ttl=lifetime - age, detail="heuristic" if entry.heuristic else None
                ),
                x_cache=b"HIT",
            )
            action = Action.NOT_MODIFIED if answer.status == 304 else Action.HIT
            return Decision(action, entry, age, answer)
        may_be_stale = not response.forbids_stale
        if (
            may_be_stale
            and response.s_maxage is None
            and request.max_stale is not None
            and staleness <= request.max_stale
        ):
            return _serve_stale(Action.HIT, entry, method, request_headers, age, "max-stale")
        swr = response.stale_while_revalidate
        if may_be_stale and swr is not None and staleness <= swr:
            return _serve_stale(
                Action.STALE_WHILE_REVALIDATE,
                entry,
                method,
                request_headers,
                age,
                "stale-while-revalidate",
            )
    if request.only_if_cached:
        return Decision(Action.ONLY_IF_CACHED_MISS, entry, age, answer=_gateway_timeout())
    fwd = "stale" if staleness >= 0 or response.no_cache else "request"
    action = Action.REVALIDATE if entry.has_validator else Action.MISS
    return Decision(action, entry, age, fwd=fwd)


def _serve_stale(
    action: Action,
    entry: StoredResponse,
    method: str,
    request_headers: HeaderPairs,
    age: float,
    detail: str,
    *,
    fwd: str | None = None,
    fwd_status: int | None = None,
) -> Decision:
    status = format_cache_status(
        hit=fwd is None,
        fwd=fwd,
        fwd_status=fwd_status,
        ttl=entry.freshness_lifetime - age,
        detail=detail,
    )
    answer = answer_from_entry(
        entry, method, request_headers, age, cache_status=status, x_cache=b"STALE"
    )
    return Decision(action, entry, age, answer, fwd=fwd, detail=detail)


def answer_revalidated(
    decision: Decision,
    entry: StoredResponse,
    method: str,
    request_headers: HeaderPairs,
    now: float,
) -> CachedAnswer:
    """The answer after a 304 refreshed ``entry`` (the result of ``freshen``): X-Cache
    REVALIDATED, ``Cache-Status: gateway; fwd=stale; fwd-status=304`` (RFC 9211 §2.2)."""
    age = current_age(entry, now)
    status = format_cache_status(
        fwd=decision.fwd or "stale", fwd_status=304, ttl=entry.freshness_lifetime - age
    )
    return answer_from_entry(
        entry, method, request_headers, age, cache_status=status, x_cache=b"REVALIDATED"
    )


def can_serve_stale_on_error(
    entry: StoredResponse, request_headers: HeaderPairs, now: float
) -> bool:
    """RFC 5861 §4 stale-if-error: the stored response may stand in for an upstream failure
    (refused, reset, closed before answering, timed out) or a 500/502/503/504 while its
    staleness is within the response's or the request's stale-if-error window, unless
    must-revalidate, proxy-revalidate, no-cache or s-maxage forbid stale use: RFC 9111
    §4.2.4 says a cache MUST NOT generate a stale response then, and s-maxage implies
    proxy-revalidate for a shared cache (§5.2.2.10)."""
    response = entry.cache_control
    if response.forbids_stale or response.s_maxage is not None:
        return False
    windows = [
        window
        for window in (
            response.stale_if_error,
            request_cache_control(request_headers).stale_if_error,
        )
        if window is not None
    ]
    if not windows:
        return False
    return current_age(entry, now) - entry.freshness_lifetime <= max(windows)


def answer_stale_on_error(
    decision: Decision,
    method: str,
    request_headers: HeaderPairs,
    now: float,
    *,
    fwd_status: int | None = None,
) -> CachedAnswer | None:
    """The stale answer for a failed forward (``fwd_status`` is the upstream's 5xx, None when
    there was no response at all), or None when stale-if-error does not allow it."""
    entry = decision.entry
    if entry is None or not can_serve_stale_on_error(entry, request_headers, now):
        return None
    stale = _serve_stale(
        Action.HIT,
        entry,
        method,
        request_headers,
        current_age(entry, now),
        "stale-if-error",
        fwd=decision.fwd or "stale",
        fwd_status=fwd_status,
    )
    return stale.answer


def forwarded_cache_headers(
    decision: Decision, fwd_status: int | None, *, stored: bool = False
) -> Headers:
    """Cache-Status and X-Cache to append to a response that came from the upstream.

    X-Cache: BYPASS when the cache stayed out, EXPIRED when a stale entry was replaced,
    MISS otherwise.  ``stored`` says whether the response is being stored (RFC 9211 §2.4).
    """
    if decision.action is Action.BYPASS:
        x_cache = b"BYPASS"
    elif decision.fwd == "stale":
        x_cache = b"EXPIRED"
    else:
        x_cache = b"MISS"
    status = _forwarded_status(decision.fwd or "miss", fwd_status, stored)
    return [(b"cache-status", status), (b"x-cache", x_cache)]


@functools.lru_cache(maxsize=256)
def _forwarded_status(fwd: str, fwd_status: int | None, stored: bool) -> bytes:
    # Memoized: a handful of (fwd, status) pairs make nearly every forwarded response's value.
    return format_cache_status(fwd=fwd, fwd_status=fwd_status, stored=stored)
