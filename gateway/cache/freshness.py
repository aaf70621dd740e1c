"""How old a response is and how long it stays fresh (RFC 9111 §4.2.1, §4.2.2, §4.2.3).

Explicit freshness (s-maxage, max-age, Expires) first; without it, a heuristic share of the
time since Last-Modified (§4.2.2), which ``storing`` allows only where §3 does.  Times are
``time.time()`` floats passed in, never read here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.cache.fields import (
    CacheControl,
    HeaderPairs,
    delta_seconds,
    first_value,
    header_lines,
    parse_cache_control,
    parse_http_date,
)

if TYPE_CHECKING:
    from gateway.cache.storing import StoredResponse


def freshness_lifetime(
    response_headers: HeaderPairs,
    response_time: float,
    cache_control: CacheControl | None = None,
    *,
    use_expires: bool = True,
) -> float | None:
    """RFC 9111 §4.2.1 for a shared cache: s-maxage, else max-age, else Expires minus Date.

    None when the response has no explicit freshness (see ``heuristic_lifetime``).
    An invalid Expires ("0", garbage) means already expired (§5.3); so do several different
    Expires lines (§4.2.1).  Without Date, the time the response arrived stands in.
    ``use_expires`` is False when a targeted field decides (RFC 9213 §2.1 ignores Expires).
    """
    if cache_control is None:
        cache_control = parse_cache_control(header_lines(response_headers, b"cache-control"))
    if cache_control.s_maxage is not None:
        return float(cache_control.s_maxage)
    if cache_control.max_age is not None:
        return float(cache_control.max_age)
    expires_lines = header_lines(response_headers, b"expires") if use_expires else []
    if not expires_lines:
        return None
    if len(set(expires_lines)) > 1:
        return 0.0
    expires = parse_http_date(expires_lines[0])
    if expires is None:
        return 0.0
    return max(0.0, expires - date_value(response_headers, response_time))


def heuristic_lifetime(
    response_headers: HeaderPairs,
    response_time: float,
    fraction: float,
    max_seconds: float,
) -> float | None:
    """RFC 9111 §4.2.2: ``fraction`` of the time between Last-Modified and Date, at most
    ``max_seconds``; None without a usable Last-Modified (or with ``fraction`` 0).

    Only for a response without explicit freshness that §3 lets a cache store that way (a
    heuristically cacheable status, or ``public``): the caller checks that.  A Last-Modified
    after Date says nothing about how stable the resource is: 0, not a negative lifetime.
    """
    if fraction <= 0:
        return None
    last_modified = first_value(response_headers, b"last-modified")
    modified = parse_http_date(last_modified) if last_modified is not None else None
    if modified is None:
        return None
    interval = max(0.0, date_value(response_headers, response_time) - modified)
    return min(interval * fraction, max_seconds)


def date_value(headers: HeaderPairs, response_time: float) -> float:
    date = first_value(headers, b"date")
    parsed = parse_http_date(date) if date is not None else None
    return response_time if parsed is None else parsed


def _age_value(headers: HeaderPairs) -> float:
    """The Age header (RFC 9111 §5.1) in seconds; absent or invalid counts as 0."""
    age = first_value(headers, b"age")
    if age is None:
        return 0.0
    delta = delta_seconds(age.split(b",")[0].strip().decode("latin-1"))
    return float(delta or 0)


def corrected_initial_age(
    response_headers: HeaderPairs, request_time: float, response_time: float
) -> float:
    """RFC 9111 §4.2.3: the age the response already had when it reached us.

    max(apparent_age, corrected_age_value), where apparent_age = response_time - Date and
    corrected_age_value = Age + response_delay (the round trip, since the upstream's Age was
    taken when it sent the response).
    """
    apparent_age = max(0.0, response_time - date_value(response_headers, response_time))
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = _age_value(response_headers) + response_delay
    return max(apparent_age, corrected_age_value)


def current_age(entry: StoredResponse, now: float) -> float:
    """RFC 9111 §4.2.3: corrected_initial_age + resident_time."""
    return entry.corrected_initial_age + max(0.0, now - entry.response_time)
