"""What a shared cache may store (RFC 9111 §3, §3.5) and the ``StoredResponse`` it keeps.

Everything that only depends on the stored response (its parsed Cache-Control, freshness
lifetime, initial age, validators, size) is computed once here, when it is stored, so a
fresh hit costs one dict lookup plus building a few header pairs.

This is a *shared* cache (RFC 9111 §1): s-maxage wins, ``private`` is never stored, and
requests carrying Authorization are stored only when the response explicitly allows it.
The directives obeyed are those of the first usable targeted field (RFC 9213), else
Cache-Control (``targeted.effective_cache_control``).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.cache.fields import (
    CacheControl,
    HeaderPairs,
    first_value,
    format_http_date,
    has_header,
    lowered,
    parse_http_date,
    request_cache_control,
)
from gateway.cache.freshness import (
    corrected_initial_age,
    date_value,
    freshness_lifetime,
    heuristic_lifetime,
)
from gateway.cache.keys import VaryKey, vary_key, vary_names
from gateway.cache.policy import DEFAULT_POLICY, CachePolicy
from gateway.cache.targeted import effective_cache_control
from gateway.headers import HOP_BY_HOP, Headers, connection_listed

# RFC 9110 §15.1 "heuristically cacheable": stored without explicit freshness (on heuristics,
# §4.2.2).  206 is left out: only complete responses are stored, ranges are cut from them.
CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# Never stored whatever the directives: partial content and 304 need combining with a
# stored response (§3.3, §4.3.4), which is done elsewhere, not by storing them.
NEVER_STORED_STATUSES = frozenset({206, 304})
# The final statuses RFC 9110 §15 defines and this cache implements; with ``must-understand``
# (§5.2.2.3) only these are stored, and their ``no-store`` is then ignored.
UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 305, 307, 308}
    | set(range(400, 418))
    | {421, 422, 426}
    | set(range(500, 506))
)
# Fixed per-entry cost added to the header and body bytes when accounting memory.
ENTRY_OVERHEAD = 256
# Never stored: connection-specific fields, Age (recomputed on every answer), X-Cache (ours),
# and Content-Length (set again from the stored body).
NOT_STORED = HOP_BY_HOP | {b"age", b"x-cache", b"content-length"}


def why_not_storable(
    method: str,
    status: int,
    request_headers: HeaderPairs,
    response_headers: HeaderPairs,
    *,
    response_time: float = 0.0,
    policy: CachePolicy = DEFAULT_POLICY,
) -> str | None:
    """None when a shared cache may store this response, else a short reason (for logs and
    Cache-Status ``detail``).  RFC 9111 §3 with §3.5 (Authorization), §4.2 (freshness),
    §5.2.2.3 (must-understand).  ``response_time`` stands in for a missing Date.

    Any final status is stored when the response says how long it is fresh (max-age,
    s-maxage, Expires) or marks itself ``public``; the heuristically cacheable ones also on
    heuristics (§4.2.2).  Stricter than §3 on purpose: only GET; Set-Cookie only when the
    response itself lets it be dropped (``no-cache="set-cookie"`` / ``private="set-cookie"``):
    a cookie is never replayed, and a response is never stored without a cookie the origin
    may rely on unless it says so (see docs/cache.md); and only when the entry can ever be
    used: fresh for a while, revalidatable (has a validator), or allowed to be served stale.
    """
    if method != "GET":
        return "method"
    if not 200 <= status <= 599 or status in NEVER_STORED_STATUSES:
        return "status"
    response_headers = lowered(response_headers)
    if request_cache_control(request_headers).no_store:
        return "request-no-store"
    cc, targeted = effective_cache_control(response_headers, policy.targeted_fields)
    if cc.must_understand:
        # §5.2.2.3: a cache that understands the status ignores the no-store sent with it.
        if status not in UNDERSTOOD_STATUSES:
            return "must-understand"
    elif cc.no_store:
        return "no-store"
    if cc.private:
        return "private"
    if has_header(response_headers, b"set-cookie") and b"set-cookie" not in cc.unshared_fields:
        return "set-cookie"
    if has_header(request_headers, b"authorization") and not (
        cc.public or cc.must_revalidate or cc.s_maxage is not None
    ):
        return "authorization"
    if b"*" in vary_names(response_headers):
        return "vary-star"
    # Only the directive in effect matters: a valid s-maxage makes a bad max-age irrelevant.
    in_effect = "s-maxage" if cc.s_maxage is not None else "max-age"
    if in_effect in cc.invalid:
        return "invalid-freshness"
    lifetime = freshness_lifetime(response_headers, response_time, cc, use_expires=not targeted)
    if lifetime is None:
        if status not in CACHEABLE_STATUSES and not cc.public:
            return "status"  # §3: no explicit freshness, public, or heuristic status
        lifetime = _heuristic(response_headers, response_time, cc, policy)
    if lifetime is None and not cc.no_cache:
        return "no-explicit-freshness"
    if (lifetime or 0.0) <= 0.0 or cc.no_cache:
        # Same test as StoredResponse.has_validator: an unparsable Last-Modified is no use.
        last_modified = first_value(response_headers, b"last-modified")
        has_validator = has_header(response_headers, b"etag") or (
            last_modified is not None and parse_http_date(last_modified) is not None
        )
        may_serve_stale = not cc.forbids_stale and (
            cc.stale_while_revalidate is not None or cc.stale_if_error is not None
        )
        if not has_validator and not may_serve_stale:
            return "stale-without-validator"
    return None


def _heuristic(
    headers: HeaderPairs, response_time: float, cc: CacheControl, policy: CachePolicy
) -> float | None:
    """§4.2.2 heuristic freshness for a response without explicit freshness; never for a
    no-cache one (it is revalidated every time anyway)."""
    if cc.no_cache:
        return None
    return heuristic_lifetime(
        headers, response_time, policy.heuristic_fraction, policy.heuristic_max_seconds
    )


def is_storable(
    method: str,
    status: int,
    request_headers: HeaderPairs,
    response_headers: HeaderPairs,
    *,
    response_time: float = 0.0,
    policy: CachePolicy = DEFAULT_POLICY,
) -> bool:
    """RFC 9111 §3: ``why_not_storable(...) is None``."""
    reason = why_not_storable(
        method,
        status,
        request_headers,
        response_headers,
        response_time=response_time,
        policy=policy,
    )
    return reason is None


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as kept by the cache (RFC 9111 §3), with what the rules need precomputed.

    ``headers`` are ready to send: no hop-by-hop fields, no Age/X-Cache, none of the fields
    that ``no-cache="..."``/``private="..."`` exclude, no targeted field of ours (RFC 9213),
    a Date (RFC 9110 §6.6.1) and a Content-Length matching ``body``.  ``targeted`` keeps those
    targeted field lines, never sent, so a 304 that freshens the entry is judged by the same
    directives; ``heuristic`` says the freshness lifetime is a §4.2.2 estimate.  Build one
    with ``make_stored_response``.
    """

    status: int
    headers: Headers
    body: bytes
    request_time: float
    response_time: float
    vary: VaryKey
    cache_control: CacheControl
    freshness_lifetime: float
    corrected_initial_age: float
    date: float
    etag: bytes | None
    last_modified: float | None
    size: int
    heuristic: bool = False
    targeted: Headers | None = None
    policy: CachePolicy = DEFAULT_POLICY

    @property
    def has_validator(self) -> bool:
        return self.etag is not None or self.last_modified is not None


def stored_fields(headers: HeaderPairs, excluded: frozenset[bytes]) -> Headers:
    # RFC 9111 §3.1: hop-by-hop fields and those named in Connection are not stored.
    lowered: Headers = [(name.lower(), value) for name, value in headers]
    listed = connection_listed(lowered)
    return [(n, v) for n, v in lowered if n not in excluded and n not in listed]


def _entry_size(headers: HeaderPairs, body: bytes) -> int:
    return len(body) + sum(len(name) + len(value) for name, value in headers) + ENTRY_OVERHEAD


def derive_entry(
    status: int,
    headers: Headers,
    body: bytes,
    vary: VaryKey,
    age_source: HeaderPairs,
    request_time: float,
    response_time: float,
    *,
    targeted: Headers,
    policy: CachePolicy,
) -> StoredResponse:
    """The entry for ``headers`` (already filtered: see ``make_stored_response``) with its
    targeted field lines ``targeted`` kept aside."""
    cc, from_target = effective_cache_control([*targeted, *headers], policy.targeted_fields)
    etag = first_value(headers, b"etag")
    last_modified = first_value(headers, b"last-modified")
    # Computed before a missing Date is added: that Date is rounded down to the second.
    lifetime = freshness_lifetime(headers, response_time, cc, use_expires=not from_target)
    heuristic = False
    if lifetime is None and (status in CACHEABLE_STATUSES or cc.public):
        lifetime = _heuristic(headers, response_time, cc, policy)
        heuristic = lifetime is not None
    initial_age = corrected_initial_age([*age_source, *headers], request_time, response_time)
    date = date_value(headers, response_time)
    if not has_header(headers, b"date"):
        # The Date sent is whole seconds: a client's If-Modified-Since copied from it must
        # compare equal to it (RFC 9111 §4.3.2), so the entry's date is rounded the same way.
        headers.append((b"date", format_http_date(response_time)))
        date = float(int(response_time))
    return StoredResponse(
        status=status,
        headers=headers,
        body=body,
        request_time=request_time,
        response_time=response_time,
        vary=vary,
        cache_control=cc,
        freshness_lifetime=lifetime or 0.0,
        corrected_initial_age=initial_age,
        date=date,
        etag=etag.strip() if etag is not None else None,
        last_modified=parse_http_date(last_modified) if last_modified is not None else None,
        size=_entry_size(headers, body),
        heuristic=heuristic,
        targeted=targeted or None,
        policy=policy,
    )


def split_targeted(headers: Headers, policy: CachePolicy) -> tuple[Headers, Headers]:
    """(the fields to keep, the lines of our targeted fields), RFC 9213 §2.1."""
    targets = policy.targeted_fields
    if not targets:
        return headers, []
    return [(n, v) for n, v in headers if n not in targets], [
        (n, v) for n, v in headers if n in targets
    ]


def make_stored_response(
    status: int,
    response_headers: HeaderPairs,
    body: bytes,
    request_headers: HeaderPairs,
    request_time: float,
    response_time: float,
    *,
    policy: CachePolicy = DEFAULT_POLICY,
) -> StoredResponse:
    """The entry to store for a response (check ``is_storable`` first).

    ``request_time``/``response_time`` are when the request went upstream and when the
    response head arrived (RFC 9111 §4.2.3).  The request supplies the Vary key (§4.1).
    The fields a qualified ``no-cache``/``private`` lists are left out (§5.2.2.4, §5.2.2.7).
    """
    headers, targeted = split_targeted(stored_fields(response_headers, NOT_STORED), policy)
    cc, _ = effective_cache_control([*targeted, *headers], policy.targeted_fields)
    if cc.unshared_fields:
        headers = [(n, v) for n, v in headers if n not in cc.unshared_fields]
    if status >= 200 and status not in (204, 304):
        headers.append((b"content-length", str(len(body)).encode("ascii")))
    vary = vary_key(request_headers, vary_names(headers))
    age_only = [(b"age", age) for n, age in response_headers if n.lower() == b"age"][:1]
    return derive_entry(
        status,
        headers,
        body,
        vary,
        age_only,
        request_time,
        response_time,
        targeted=targeted,
        policy=policy,
    )
