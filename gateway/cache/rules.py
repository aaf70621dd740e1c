"""The caching rules of RFC 9111 (and RFC 5861, RFC 9211) as pure functions: no I/O, no clock.

Theory of operation.  The store (``gateway.cache.store``) only keeps ``StoredResponse`` objects;
every question about them is answered here:

- may this response be stored?           ``why_not_storable``, ``is_storable`` (§3, §3.5)
- what is kept, and how old is it?       ``make_stored_response``, ``current_age`` (§3.1, §4.2.3)
- what do we do with this request?       ``lookup_decision`` -> ``Decision`` (§4, §4.2.4, §5.2.1)
- how do we revalidate, merge a 304?     ``revalidation_request_headers``, ``freshen`` (§4.3)
- what does the client get from us?      ``answer_from_entry`` -> ``CachedAnswer`` (RFC 9211)
- which entries does a POST invalidate?  ``invalidation_keys`` (§4.4)

Headers are ASGI-style ``[(lowercase name, value)]`` byte pairs.  Times are float seconds on the
``time.time()`` scale and always passed in (``now``, ``request_time``, ``response_time``), so
tests control the clock.  Everything that only depends on the stored response (its parsed
Cache-Control, freshness lifetime, initial age, validators) is computed once when it is stored,
so a fresh hit costs one dict lookup plus building a few header pairs.

This is a *shared* cache (RFC 9111 §1): s-maxage wins, ``private`` is never stored, and
requests carrying Authorization are stored only when the response explicitly allows it.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from urllib.parse import urljoin, urlsplit

from gateway.headers import HOP_BY_HOP, Headers, connection_listed

HeaderPairs = Sequence[tuple[bytes, bytes]]
# The request header values a stored response was selected by (RFC 9111 §4.1): one
# (name, normalized value) pair per Vary name, sorted; None marks a header the request lacked.
VaryKey = tuple[tuple[bytes, bytes | None], ...]

CACHE_NAME = "gateway"  # the cache's identifier in Cache-Status (RFC 9211 §2)
# RFC 9111 §1.2.2: delta-seconds too large to represent are taken as 2^31.
MAX_DELTA = 2**31
# Statuses we store (RFC 9110 §15.1 "heuristically cacheable", minus 206: no range support).
CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# RFC 5861 §4: the upstream answers that stale-if-error may hide.
STALE_IF_ERROR_STATUSES = frozenset({500, 502, 503, 504})
CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
# RFC 9110 §9.2.1; every other method, known or not, is unsafe for §4.4 invalidation.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Fixed per-entry cost added to the header and body bytes when accounting memory.
ENTRY_OVERHEAD = 256

# Never stored: connection-specific fields, Age (recomputed on every answer), X-Cache (ours),
# and Content-Length (set again from the stored body).
_NOT_STORED = HOP_BY_HOP | {b"age", b"x-cache", b"content-length"}
# A 304 must not change how the stored body is framed or encoded (RFC 9111 §3.2).
_NOT_UPDATED = _NOT_STORED | {b"content-encoding", b"content-range"}
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
# Request fields that keep the cache out (see ``bypass_reason``).
_BYPASS_FIELDS = {
    b"range": "range",
    b"if-range": "range",
    # Preconditions only the origin evaluates (RFC 9111 §4.3.2).
    b"if-match": "precondition",
    b"if-unmodified-since": "precondition",
}


# --- header access ------------------------------------------------------------------------------


def header_lines(headers: HeaderPairs, name: bytes) -> list[bytes]:
    """Every field line named ``name``, in order.  Names are compared as given: lowercase, as
    ASGI guarantees; upstream response headers are lowercased once where they come in
    (``why_not_storable``, ``make_stored_response``, ``freshen``, ``invalidation_keys``)."""
    return [value for key, value in headers if key == name]


def _has_header(headers: HeaderPairs, name: bytes) -> bool:
    return any(key == name for key, _ in headers)


def _first(headers: HeaderPairs, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _lowered(headers: HeaderPairs) -> Headers:
    return [(name.lower(), value) for name, value in headers]


# --- Cache-Control --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheControl:
    """Parsed Cache-Control directives (RFC 9111 §5.2), request or response.

    Delta-seconds are ints; an invalid or conflicting max-age/s-maxage is recorded as 0 (already
    stale, §4.2.1) and its name kept in ``invalid``; other invalid arguments count as absent.
    A bare ``max-stale`` is MAX_DELTA.  The qualified forms ``no-cache="f"`` and ``private="f"``
    are treated as unqualified (§5.2.2.4, §5.2.2.7 allow it, and it is the conservative choice).
    """

    no_store: bool = False
    no_cache: bool = False
    private: bool = False
    public: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    only_if_cached: bool = False
    max_age: int | None = None
    s_maxage: int | None = None
    max_stale: int | None = None
    min_fresh: int | None = None
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    invalid: frozenset[str] = frozenset()

    @property
    def forbids_stale(self) -> bool:
        """Response directives that forbid serving it stale (RFC 9111 §4.2.4, §5.2.2)."""
        return self.must_revalidate or self.proxy_revalidate or self.no_cache


NO_DIRECTIVES = CacheControl()


def _split_directives(text: str) -> Iterable[tuple[str, str | None]]:
    """(lowercase name, unquoted argument or None) for each ``#cache-directive`` (§5.2)."""
    if '"' in text:
        items: list[str] = []
        current: list[str] = []
        quoted = escaped = False
        for char in text:
            if quoted:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    quoted = False
            elif char == '"':
                quoted = True
            elif char == ",":
                items.append("".join(current))
                current = []
                continue
            current.append(char)
        items.append("".join(current))
    else:
        items = text.split(",")
    for item in items:
        name, has_argument, argument = item.partition("=")
        name = name.strip().lower()
        if not name:
            continue
        if not has_argument:
            yield name, None
            continue
        argument = argument.strip()
        if len(argument) >= 2 and argument[0] == argument[-1] == '"':
            # RFC 9111 §5.2: accept the quoted form even where the token form is defined.
            argument = re.sub(r"\\(.)", r"\1", argument[1:-1])
        yield name, argument


def _delta_seconds(argument: str | None) -> int | None:
    """RFC 9111 §1.2.2 delta-seconds, or None when not 1*DIGIT."""
    if argument is None or not argument.isascii() or not argument.isdigit():
        return None
    if len(argument) > 10:  # also keeps int() away from its digit limit
        return MAX_DELTA
    return min(int(argument), MAX_DELTA)


def parse_cache_control(values: Iterable[bytes | str]) -> CacheControl:
    """Parse Cache-Control field lines (RFC 9111 §5.2); never raises.

    Names are case-insensitive.  A directive repeated with a different argument is a conflict
    (§4.2.1): for max-age/s-maxage that means "stale" (0), for the others it is ignored.
    """
    seen: dict[str, str | None] = {}
    conflicting: set[str] = set()
    for value in values:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        for name, argument in _split_directives(text):
            if name in seen and seen[name] != argument:
                conflicting.add(name)
            seen.setdefault(name, argument)
    if not seen:
        return NO_DIRECTIVES

    invalid: set[str] = set()

    def freshness(name: str) -> int | None:
        if name not in seen:
            return None
        delta = _delta_seconds(seen[name])
        if delta is None or name in conflicting:
            invalid.add(name)
            return 0
        return delta

    def optional_delta(name: str) -> int | None:
        return None if name in conflicting else _delta_seconds(seen.get(name))

    max_stale = optional_delta("max-stale")
    if "max-stale" in seen and seen["max-stale"] is None and "max-stale" not in conflicting:
        max_stale = MAX_DELTA  # RFC 9111 §5.2.1.2: no argument means any staleness
    max_age = freshness("max-age")
    s_maxage = freshness("s-maxage")
    return CacheControl(
        no_store="no-store" in seen,
        no_cache="no-cache" in seen,
        private="private" in seen,
        public="public" in seen,
        must_revalidate="must-revalidate" in seen,
        proxy_revalidate="proxy-revalidate" in seen,
        only_if_cached="only-if-cached" in seen,
        max_age=max_age,
        s_maxage=s_maxage,
        max_stale=max_stale,
        min_fresh=optional_delta("min-fresh"),
        stale_while_revalidate=optional_delta("stale-while-revalidate"),
        stale_if_error=optional_delta("stale-if-error"),
        invalid=frozenset(invalid),
    )


def request_cache_control(request_headers: HeaderPairs) -> CacheControl:
    """The request's directives; ``Pragma: no-cache`` counts only without Cache-Control
    (RFC 9111 §5.4)."""
    lines: list[bytes] = []
    pragma_no_cache = False
    for name, value in request_headers:
        if name == b"cache-control":
            lines.append(value)
        elif name == b"pragma" and not pragma_no_cache:
            pragma_no_cache = any(t.strip().lower() == b"no-cache" for t in value.split(b","))
    if lines:
        return parse_cache_control(lines)
    return CacheControl(no_cache=True) if pragma_no_cache else NO_DIRECTIVES


# --- HTTP dates -----------------------------------------------------------------------------

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_IMF_FIXDATE = re.compile(
    r"[a-z]{3}, (\d{1,2}) ([a-z]{3}) (\d{4}) (\d\d):(\d\d):(\d\d) gmt", re.I | re.A
)
_RFC850_DATE = re.compile(
    r"[a-z]{6,9}, (\d\d)-([a-z]{3})-(\d\d) (\d\d):(\d\d):(\d\d) gmt", re.I | re.A
)
_ASCTIME_DATE = re.compile(
    r"[a-z]{3} ([a-z]{3}) ([ \d]\d) (\d\d):(\d\d):(\d\d) (\d{4})", re.I | re.A
)


def parse_http_date(value: bytes | str) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7: IMF-fixdate, rfc850-date, asctime-date) as a timestamp,
    or None when it is not one; never raises."""
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip()
    if match := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
    elif match := _RFC850_DATE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
        # Two-digit years: a fixed pivot instead of §5.6.7's "50 years ahead" rule, which
        # would need the clock; rfc850 dates are obsolete, and this is right until 2070.
        year = str(int(year) + (2000 if int(year) < 70 else 1900))
    elif match := _ASCTIME_DATE.fullmatch(text):
        month, day, hour, minute, second, year = match.groups()
    else:
        return None
    month_number = _MONTHS.get(month.lower())
    if month_number is None:
        return None
    try:
        moment = datetime(
            int(year), month_number, int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
    except ValueError:  # 31 Feb, hour 25, ...
        return None
    return moment.timestamp()


def format_http_date(timestamp: float) -> bytes:
    """An IMF-fixdate (RFC 9110 §5.6.7) for ``timestamp``."""
    return formatdate(timestamp, usegmt=True).encode("ascii")


# --- freshness and age ----------------------------------------------------------------------


def freshness_lifetime(
    response_headers: HeaderPairs,
    response_time: float,
    cache_control: CacheControl | None = None,
) -> float | None:
    """RFC 9111 §4.2.1 for a shared cache: s-maxage, else max-age, else Expires minus Date.

    None when the response has no explicit freshness (we never use heuristics, §4.2.2).
    An invalid Expires ("0", garbage) means already expired (§5.3); so do several different
    Expires lines (§4.2.1).  Without Date, the time the response arrived stands in.
    """
    if cache_control is None:
        cache_control = parse_cache_control(header_lines(response_headers, b"cache-control"))
    if cache_control.s_maxage is not None:
        return float(cache_control.s_maxage)
    if cache_control.max_age is not None:
        return float(cache_control.max_age)
    expires_lines = header_lines(response_headers, b"expires")
    if not expires_lines:
        return None
    if len(set(expires_lines)) > 1:
        return 0.0
    expires = parse_http_date(expires_lines[0])
    if expires is None:
        return 0.0
    return max(0.0, expires - _date_value(response_headers, response_time))


def _date_value(headers: HeaderPairs, response_time: float) -> float:
    date = _first(headers, b"date")
    parsed = parse_http_date(date) if date is not None else None
    return response_time if parsed is None else parsed


def _age_value(headers: HeaderPairs) -> float:
    """The Age header (RFC 9111 §5.1) in seconds; absent or invalid counts as 0."""
    age = _first(headers, b"age")
    if age is None:
        return 0.0
    delta = _delta_seconds(age.split(b",")[0].strip().decode("latin-1"))
    return float(delta or 0)


def corrected_initial_age(
    response_headers: HeaderPairs, request_time: float, response_time: float
) -> float:
    """RFC 9111 §4.2.3: the age the response already had when it reached us.

    max(apparent_age, corrected_age_value), where apparent_age = response_time - Date and
    corrected_age_value = Age + response_delay (the round trip, since the upstream's Age was
    taken when it sent the response).
    """
    apparent_age = max(0.0, response_time - _date_value(response_headers, response_time))
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = _age_value(response_headers) + response_delay
    return max(apparent_age, corrected_age_value)


def current_age(entry: StoredResponse, now: float) -> float:
    """RFC 9111 §4.2.3: corrected_initial_age + resident_time."""
    return entry.corrected_initial_age + max(0.0, now - entry.response_time)


# --- keys and Vary --------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def primary_key(scheme: str, host: str | bytes, path: str | bytes, query: str | bytes = "") -> str:
    """The cache key of a target URI (RFC 9111 §2): ``scheme://host[:port]path[?query]``.

    Scheme and host are lowercased and the scheme's default port dropped; path and query are
    kept exactly as received (pass ASGI ``raw_path`` and ``query_string``), so the same form
    comes back from Location headers in ``invalidation_keys``.
    """
    scheme = scheme.lower()
    authority = _text(host).strip().lower()
    if authority.startswith("["):  # IPv6 literal: [::1]:8443
        name, _, rest = authority.partition("]")
        name, port = name + "]", rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = authority.partition(":")
    if port and port != _DEFAULT_PORTS.get(scheme):
        name = f"{name}:{port}"
    key = f"{scheme}://{name}{_text(path) or '/'}"
    query = _text(query)
    return f"{key}?{query}" if query else key


def vary_names(response_headers: HeaderPairs) -> tuple[bytes, ...]:
    """The request header names listed in Vary (RFC 9111 §4.1), lowercase, sorted, unique;
    ``b"*"`` when present means "varies on everything" (never stored)."""
    names = {
        part.strip().lower()
        for line in header_lines(response_headers, b"vary")
        for part in line.split(b",")
    }
    names.discard(b"")
    return tuple(sorted(names))


def _normalized_field(lines: list[bytes]) -> bytes | None:
    # RFC 9111 §4.1 allows matching after combining field lines and removing whitespace
    # where the syntax allows it; empty list elements are ignored (RFC 9110 §5.6.1).
    if not lines:
        return None
    return b", ".join(part for line in lines for p in line.split(b",") if (part := p.strip()))


def vary_key(request_headers: HeaderPairs, names: Iterable[bytes]) -> VaryKey:
    """The selecting header values of a request for the given Vary names (RFC 9111 §4.1).

    An absent header (None) only matches an absent one; an empty header is b"".
    """
    return tuple((name, _normalized_field(header_lines(request_headers, name))) for name in names)


def vary_matches(entry: StoredResponse, request_headers: HeaderPairs) -> bool:
    """Whether ``entry`` may be selected for this request (RFC 9111 §4.1)."""
    if not entry.vary:
        return True
    return entry.vary == vary_key(request_headers, (name for name, _ in entry.vary))


# --- storing --------------------------------------------------------------------------------


def why_not_storable(
    method: str,
    status: int,
    request_headers: HeaderPairs,
    response_headers: HeaderPairs,
    *,
    response_time: float = 0.0,
) -> str | None:
    """None when a shared cache may store this response, else a short reason (for logs and
    Cache-Status ``detail``).  RFC 9111 §3 with §3.5 (Authorization), §4.2.1 (freshness).
    ``response_time`` stands in for a missing Date when judging Expires.

    Stricter than §3 on purpose: only GET, only CACHEABLE_STATUSES, never with Set-Cookie,
    only with explicit freshness (or no-cache), and only when the entry can ever be used: it
    is fresh for a while, can be revalidated (has a validator), or may be served stale.
    """
    if method != "GET":
        return "method"
    if status not in CACHEABLE_STATUSES:
        return "status"
    response_headers = _lowered(response_headers)
    if request_cache_control(request_headers).no_store:
        return "request-no-store"
    cc = parse_cache_control(header_lines(response_headers, b"cache-control"))
    if cc.no_store:
        return "no-store"
    if cc.private:
        return "private"
    if _has_header(response_headers, b"set-cookie"):
        return "set-cookie"
    if _has_header(request_headers, b"authorization") and not (
        cc.public or cc.must_revalidate or cc.s_maxage is not None
    ):
        return "authorization"
    if b"*" in vary_names(response_headers):
        return "vary-star"
    # Only the directive in effect matters: a valid s-maxage makes a bad max-age irrelevant.
    in_effect = "s-maxage" if cc.s_maxage is not None else "max-age"
    if in_effect in cc.invalid:
        return "invalid-freshness"
    lifetime = freshness_lifetime(response_headers, response_time, cc)
    if lifetime is None and not cc.no_cache:
        return "no-explicit-freshness"
    if (lifetime or 0.0) <= 0.0 or cc.no_cache:
        # Same test as StoredResponse.has_validator: an unparsable Last-Modified is no use.
        last_modified = _first(response_headers, b"last-modified")
        has_validator = _has_header(response_headers, b"etag") or (
            last_modified is not None and parse_http_date(last_modified) is not None
        )
        may_serve_stale = not cc.forbids_stale and (
            cc.stale_while_revalidate is not None or cc.stale_if_error is not None
        )
        if not has_validator and not may_serve_stale:
            return "stale-without-validator"
    return None


def is_storable(
    method: str,
    status: int,
    request_headers: HeaderPairs,
    response_headers: HeaderPairs,
    *,
    response_time: float = 0.0,
) -> bool:
    """RFC 9111 §3: ``why_not_storable(...) is None``."""
    reason = why_not_storable(
        method, status, request_headers, response_headers, response_time=response_time
    )
    return reason is None


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as kept by the cache (RFC 9111 §3), with what the rules need precomputed.

    ``headers`` are ready to send: no hop-by-hop fields, no Age/X-Cache, a Date (RFC 9110
    §6.6.1) and a Content-Length matching ``body``.  Build one with ``make_stored_response``.
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

    @property
    def has_validator(self) -> bool:
        return self.etag is not None or self.last_modified is not None


def _stored_fields(headers: HeaderPairs, excluded: frozenset[bytes]) -> Headers:
    # RFC 9111 §3.1: hop-by-hop fields and those named in Connection are not stored.
    lowered: Headers = [(name.lower(), value) for name, value in headers]
    listed = connection_listed(lowered)
    return [(n, v) for n, v in lowered if n not in excluded and n not in listed]


def _entry_size(headers: HeaderPairs, body: bytes) -> int:
    return len(body) + sum(len(name) + len(value) for name, value in headers) + ENTRY_OVERHEAD


def _derive(
    status: int,
    headers: Headers,
    body: bytes,
    vary: VaryKey,
    age_source: HeaderPairs,
    request_time: float,
    response_time: float,
) -> StoredResponse:
    cc = parse_cache_control(header_lines(headers, b"cache-control"))
    etag = _first(headers, b"etag")
    last_modified = _first(headers, b"last-modified")
    # Computed before a missing Date is added: that Date is rounded down to the second.
    lifetime = freshness_lifetime(headers, response_time, cc)
    initial_age = corrected_initial_age([*age_source, *headers], request_time, response_time)
    date = _date_value(headers, response_time)
    if not _has_header(headers, b"date"):
        headers.append((b"date", format_http_date(response_time)))
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
    )


def make_stored_response(
    status: int,
    response_headers: HeaderPairs,
    body: bytes,
    request_headers: HeaderPairs,
    request_time: float,
    response_time: float,
) -> StoredResponse:
    """The entry to store for a response (check ``is_storable`` first).

    ``request_time``/``response_time`` are when the request went upstream and when the
    response head arrived (RFC 9111 §4.2.3).  The request supplies the Vary key (§4.1).
    """
    headers = _stored_fields(response_headers, _NOT_STORED)
    if status >= 200 and status not in (204, 304):
        headers.append((b"content-length", str(len(body)).encode("ascii")))
    vary = vary_key(request_headers, vary_names(headers))
    age_only = [(b"age", age) for n, age in response_headers if n.lower() == b"age"][:1]
    return _derive(status, headers, body, vary, age_only, request_time, response_time)


def freshen(
    entry: StoredResponse,
    not_modified_headers: HeaderPairs,
    request_time: float,
    response_time: float,
) -> StoredResponse | None:
    """The entry updated by a 304 to our conditional request (RFC 9111 §4.3.3, §4.3.4, §3.2).

    Every field of the 304 replaces the stored ones of that name, except framing and
    encoding; age and freshness restart from this exchange.  None when the 304 is not about
    this entry (a different validator, §4.3.4) or now forbids storing (no-store, private):
    drop the entry and fetch the resource anew.
    """
    not_modified_headers = _lowered(not_modified_headers)
    new_etag = _first(not_modified_headers, b"etag")
    new_last_modified = _first(not_modified_headers, b"last-modified")
    if new_etag is not None:
        if entry.etag is None or new_etag.strip() != entry.etag:
            return None
    elif new_last_modified is not None and entry.last_modified is not None:
        if parse_http_date(new_last_modified) != entry.last_modified:
            return None
    updates = _stored_fields(not_modified_headers, _NOT_UPDATED)
    updated_names = {name for name, _ in updates}
    # Without a Date in the 304 the old one would make the entry look old at once.
    updated_names.add(b"date")
    headers = [(n, v) for n, v in entry.headers if n not in updated_names] + updates
    age_only = [(b"age", age) for age in header_lines(not_modified_headers, b"age")[:1]]
    fresh = _derive(
        entry.status, headers, entry.body, entry.vary, age_only, request_time, response_time
    )
    if fresh.cache_control.no_store or fresh.cache_control.private:
        return None
    return fresh


# --- conditional requests -------------------------------------------------------------------


def parse_entity_tags(value: bytes) -> list[bytes]:
    """The entity-tags of an If-None-Match/If-Match list (RFC 9110 §8.8.3, §13.1.2), each with
    its ``W/`` prefix and quotes; ``[b"*"]`` for the wildcard.  Lenient, never raises: an
    unquoted tag is taken up to the next comma (some clients send those)."""
    tags: list[bytes] = []
    position, length = 0, len(value)
    while position < length:
        char = value[position : position + 1]
        if char in (b" ", b"\t", b","):
            position += 1
            continue
        start = position
        if value.startswith(b'W/"', position):
            position += 2
        if value[position : position + 1] == b'"':
            close = value.find(b'"', position + 1)
            end = length if close < 0 else close + 1
        else:
            comma = value.find(b",", position)
            end = length if comma < 0 else comma
        tag = value[start:end].strip()
        if tag:
            tags.append(tag)
        position = max(end, position + 1)
    return tags


def _opaque_tag(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def weak_match(a: bytes, b: bytes) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison: equal opaque-tags, either or both may be weak."""
    return _opaque_tag(a) == _opaque_tag(b)


def not_modified(entry: StoredResponse, request_headers: HeaderPairs) -> bool:
    """Whether the client's own conditional GET/HEAD is answered 304 from ``entry``.

    RFC 9110 §13.1.2 If-None-Match (weak comparison, lists, ``*``); §13.1.3 If-Modified-Since,
    evaluated only without If-None-Match (§13.2.2) and against Last-Modified or, lacking it,
    the stored Date (RFC 9111 §4.3.2).  Only 2xx responses have preconditions (§13.2.1).
    """
    if not 200 <= entry.status < 300:
        return False
    if_none_match = header_lines(request_headers, b"if-none-match")
    if if_none_match:
        tags = [tag for line in if_none_match for tag in parse_entity_tags(line)]
        if b"*" in tags:
            return True
        return entry.etag is not None and any(weak_match(tag, entry.etag) for tag in tags)
    if_modified_since = header_lines(request_headers, b"if-modified-since")
    if len(if_modified_since) != 1:
        return False
    since = parse_http_date(if_modified_since[0])
    if since is None:
        return False
    modified = entry.last_modified if entry.last_modified is not None else entry.date
    return modified <= since


def conditional_request_headers(entry: StoredResponse) -> Headers:
    """If-None-Match / If-Modified-Since validating ``entry`` upstream (RFC 9111 §4.3.1)."""
    conditions: Headers = []
    if entry.etag is not None:
        conditions.append((b"if-none-match", entry.etag))
    last_modified = _first(entry.headers, b"last-modified")
    if last_modified is not None:
        conditions.append((b"if-modified-since", last_modified))
    return conditions


def revalidation_request_headers(request_headers: HeaderPairs, entry: StoredResponse) -> Headers:
    """The client's request headers with its own validators replaced by the entry's, so the
    upstream's 304 is about what we store (RFC 9111 §4.3.1, §4.3.2).  The client's
    conditional is then evaluated against the refreshed entry by ``answer_from_entry``."""
    kept = [(n, v) for n, v in request_headers if n not in (b"if-none-match", b"if-modified-since")]
    return kept + conditional_request_headers(entry)


# --- deciding and answering -----------------------------------------------------------------


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
    return CachedAnswer(entry.status, entry.headers + ours, b"" if method == "HEAD" else entry.body)


def bypass_reason(method: str, request_headers: HeaderPairs) -> str | None:
    """Why the cache stays out of this request entirely (neither serves nor stores), or None.

    Non-GET/HEAD methods; ``Cache-Control: no-store`` (RFC 9111 §5.2.1.5, stricter than
    required); Range/If-Range (we keep no partial content); If-Match/If-Unmodified-Since,
    which only the origin can evaluate (RFC 9111 §4.3.2).
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
                cache_status=format_cache_status(hit=True, ttl=lifetime - age),
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
    or a 500/502/503/504 while its staleness is within the response's or the request's
    stale-if-error window, unless must-revalidate, proxy-revalidate or no-cache forbid
    stale use (RFC 9111 §4.2.4).  As with stale-while-revalidate, an explicit grant
    outweighs the proxy-revalidate that s-maxage implies (see ``lookup_decision``)."""
    response = entry.cache_control
    if response.forbids_stale:
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
    status = format_cache_status(fwd=decision.fwd or "miss", fwd_status=fwd_status, stored=stored)
    return [(b"cache-status", status), (b"x-cache", x_cache)]


# --- invalidation ---------------------------------------------------------------------------


def _origin(key: str) -> str:
    scheme, _, rest = key.partition("://")
    return scheme + "://" + rest.split("/", 1)[0]


def invalidation_keys(
    method: str, status: int, target_key: str, response_headers: HeaderPairs
) -> list[str]:
    """Primary keys an unsafe request's non-error response invalidates (RFC 9111 §4.4).

    The target URI itself, plus the URIs in Location and Content-Location when they have the
    same origin as the target (a response must not invalidate another site's entries).
    ``target_key`` is the request's ``primary_key``; relative references resolve against it.
    """
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    response_headers = _lowered(response_headers)
    keys = [target_key]
    for name in (b"location", b"content-location"):
        for value in header_lines(response_headers, name):
            try:
                parts = urlsplit(urljoin(target_key, value.decode("latin-1").strip()))
            except ValueError:
                continue
            if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
                continue
            host = parts.netloc.rpartition("@")[2]
            key = primary_key(parts.scheme, host, parts.path, parts.query)
            if _origin(key) == _origin(target_key) and key not in keys:
                keys.append(key)
    return keys
