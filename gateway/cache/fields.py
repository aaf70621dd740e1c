"""The header fields the cache reads, parsed: Cache-Control, HTTP-date, and field access.

Cache-Control directives for requests and responses (RFC 9111 §5.2, with ``Pragma`` §5.4),
HTTP-dates (RFC 9110 §5.6.7) and delta-seconds (RFC 9111 §1.2.2).  Every parser here is
lenient and never raises: a malformed field is treated as the RFCs say a recipient should,
usually as absent or as "already stale".

Headers are ASGI-style ``[(lowercase name, value)]`` byte pairs.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate

from gateway.headers import Headers

HeaderPairs = Sequence[tuple[bytes, bytes]]

# RFC 9111 §1.2.2: delta-seconds too large to represent are taken as 2^31.
MAX_DELTA = 2**31


def header_lines(headers: HeaderPairs, name: bytes) -> list[bytes]:
    """Every field line named ``name``, in order.  Names are compared as given: lowercase, as
    ASGI guarantees; upstream response headers are lowercased once where they come in
    (``why_not_storable``, ``make_stored_response``, ``freshen``, ``invalidation_keys``)."""
    return [value for key, value in headers if key == name]


def has_header(headers: HeaderPairs, name: bytes) -> bool:
    return any(key == name for key, _ in headers)


def first_value(headers: HeaderPairs, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def lowered(headers: HeaderPairs) -> Headers:
    return [(name.lower(), value) for name, value in headers]


# --- Cache-Control --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheControl:
    """Parsed Cache-Control directives (RFC 9111 §5.2), request or response.

    Delta-seconds are ints; an invalid or conflicting max-age/s-maxage is recorded as 0 (already
    stale, §4.2.1) and its name kept in ``invalid``; other invalid arguments count as absent.
    A bare ``max-stale`` is MAX_DELTA.  ``no_cache`` and ``private`` are the unqualified forms;
    the qualified ``no-cache="f"`` / ``private="f"`` (§5.2.2.4, §5.2.2.7) only list the fields a
    shared cache must not reuse, in ``no_cache_fields`` / ``private_fields`` (lowercase).  Both
    forms present, or an empty list, count as unqualified: the conservative reading.
    """

    no_store: bool = False
    no_cache: bool = False
    private: bool = False
    no_cache_fields: frozenset[bytes] = frozenset()
    private_fields: frozenset[bytes] = frozenset()
    must_understand: bool = False
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

    @property
    def unshared_fields(self) -> frozenset[bytes]:
        """Fields the cache stores the response without (§5.2.2.4, §5.2.2.7)."""
        return self.no_cache_fields | self.private_fields


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


def delta_seconds(argument: str | None) -> int | None:
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
    if isinstance(values, list) and len(values) == 1:
        line = values[0]
        if isinstance(line, bytes) and len(line) <= _MEMO_MAX_LINE:
            return _parse_line(line)
    return _parse(values)


# An origin sends the same few Cache-Control lines again and again, and every forwarded
# response on a caching route is judged by them: remember the parse of short single lines
# (the result is immutable, so sharing it is safe).
_MEMO_MAX_LINE = 256


@functools.lru_cache(maxsize=512)
def _parse_line(line: bytes) -> CacheControl:
    return _parse((line,))


def _parse(values: Iterable[bytes | str]) -> CacheControl:
    def directives() -> Iterable[tuple[str, str | None]]:
        for value in values:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            yield from _split_directives(text)

    return directives_to_cache_control(directives())


# The directives whose argument is a list of field names (§5.2.2.4, §5.2.2.7).
_QUALIFIABLE = ("no-cache", "private")


def _field_names(arguments: list[str | None]) -> frozenset[bytes] | None:
    """The union of the field-name lists of a qualifiable directive; None for unqualified
    (any bare occurrence, or a list with no names in it)."""
    names: set[bytes] = set()
    for argument in arguments:
        if argument is None:
            return None
        listed = {n.strip().lower().encode("latin-1") for n in argument.split(",")}
        listed.discard(b"")
        if not listed:
            return None
        names |= listed
    return frozenset(names)


def directives_to_cache_control(directives: Iterable[tuple[str, str | None]]) -> CacheControl:
    """``CacheControl`` from (lowercase name, argument) pairs, the shared step of parsing
    Cache-Control and a targeted field (RFC 9213 §2.1: the same semantics and precedence)."""
    seen: dict[str, str | None] = {}
    conflicting: set[str] = set()
    qualifiable: dict[str, list[str | None]] = {}
    for name, argument in directives:
        if name in _QUALIFIABLE:
            qualifiable.setdefault(name, []).append(argument)
        if name in seen and seen[name] != argument:
            conflicting.add(name)
        seen.setdefault(name, argument)
    if not seen:
        return NO_DIRECTIVES

    invalid: set[str] = set()

    def freshness(name: str) -> int | None:
        if name not in seen:
            return None
        delta = delta_seconds(seen[name])
        if delta is None or name in conflicting:
            invalid.add(name)
            return 0
        return delta

    def optional_delta(name: str) -> int | None:
        return None if name in conflicting else delta_seconds(seen.get(name))

    max_stale = optional_delta("max-stale")
    if "max-stale" in seen and seen["max-stale"] is None and "max-stale" not in conflicting:
        max_stale = MAX_DELTA  # RFC 9111 §5.2.1.2: no argument means any staleness
    max_age = freshness("max-age")
    s_maxage = freshness("s-maxage")
    no_cache_fields = private_fields = frozenset[bytes]()
    no_cache = private = False
    if "no-cache" in qualifiable:
        listed = _field_names(qualifiable["no-cache"])
        no_cache, no_cache_fields = listed is None, listed or frozenset()
    if "private" in qualifiable:
        listed = _field_names(qualifiable["private"])
        private, private_fields = listed is None, listed or frozenset()
    return CacheControl(
        no_store="no-store" in seen,
        no_cache=no_cache,
        private=private,
        no_cache_fields=no_cache_fields,
        private_fields=private_fields,
        must_understand="must-understand" in seen,
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
        parsed = parse_cache_control(lines)
        if parsed.no_cache_fields:
            # A field list means nothing on a request (§5.2.1.4): take it as plain no-cache.
            return dataclasses.replace(parsed, no_cache=True, no_cache_fields=frozenset())
        return parsed
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
