"""The HTTP rules of serving a file, as pure functions: content type, validators (ETag,
Last-Modified), conditional requests (RFC 9110 §13), byte ranges (§14) and the choice of a
precompressed variant by Accept-Encoding (§12.5.3).  No I/O: ``handlers.static`` calls them.
"""

from __future__ import annotations

import functools
import mimetypes
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import formatdate

from gateway.cache.conditional import parse_entity_tags, weak_match
from gateway.cache.fields import parse_http_date
from gateway.cache.ranges import coalesce, parse_ranges
from gateway.errors import RangeNotSatisfiable

# Python's built-in table (not /etc/mime.types, so every machine answers alike) plus the
# types it lacks or gets wrong (RFC 9239: JavaScript is text/javascript).
MIME_TYPES = mimetypes.MimeTypes()
EXTRA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".map": "application/json",
    ".md": "text/markdown",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
}
# A file that is itself compressed (``logs.tar.gz``) is served as the compressed file.
COMPRESSED_TYPES = {
    "gzip": "application/gzip",
    "br": "application/x-brotli",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
}
UTF8_TYPES = frozenset({"application/javascript", "application/xml", "image/svg+xml"})
OCTET_STREAM = "application/octet-stream"


def content_type(name: str) -> str:
    """Content-Type by file extension; text types get ``charset=utf-8``."""
    suffix = os.path.splitext(name)[1].lower()
    kind = EXTRA_TYPES.get(suffix)
    if kind is None:
        kind, coding = MIME_TYPES.guess_type(name, strict=False)
        if coding is not None:
            kind = COMPRESSED_TYPES.get(coding, OCTET_STREAM)
    if kind is None:
        return OCTET_STREAM
    if kind.startswith("text/") or kind in UTF8_TYPES:
        return kind + "; charset=utf-8"
    return kind


def entity_tag(size: int, mtime_ns: int, coding: str | None) -> bytes:
    """A strong ETag from modification time and size (as Nginx makes it), one per variant:
    the br and gzip sidecars are other representations with other bytes."""
    tag = b'"%x-%x' % (mtime_ns, size)
    return tag + (b"-" + coding.encode() if coding else b"") + b'"'


@functools.lru_cache(maxsize=1024)
def http_date(seconds: int) -> bytes:
    """An IMF-fixdate; memoized, as the same Last-Modified values come back on every request."""
    return formatdate(seconds, usegmt=True).encode()


@dataclass(frozen=True, slots=True)
class Conditions:
    """The request fields a static answer depends on (joined when repeated)."""

    if_none_match: bytes | None = None
    if_modified_since: bytes | None = None
    range: bytes | None = None
    if_range: bytes | None = None
    accept_encoding: bytes | None = None

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[bytes, bytes]]) -> Conditions:
        found: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            if name in _CONDITION_FIELDS:
                found.setdefault(name, []).append(value)
        if not found:
            return _NO_CONDITIONS

        def joined(name: bytes) -> bytes | None:
            values = found.get(name)
            return b", ".join(values) if values else None

        def first(name: bytes) -> bytes | None:
            values = found.get(name)
            return values[0] if values else None

        ranges = found.get(b"range", [])
        return cls(
            joined(b"if-none-match"),
            first(b"if-modified-since"),
            # Two Range fields make the range ambiguous: ignored, the whole file is sent.
            ranges[0] if len(ranges) == 1 else None,
            first(b"if-range"),
            joined(b"accept-encoding"),
        )


_CONDITION_FIELDS = frozenset(
    {b"if-none-match", b"if-modified-since", b"range", b"if-range", b"accept-encoding"}
)
_NO_CONDITIONS = Conditions()


def not_modified(conditions: Conditions, etag: bytes, mtime: int) -> bool:
    """RFC 9110 §13.2.2 steps 3 and 4 for GET/HEAD: a 304 instead of the file?
    If-None-Match by weak comparison (a list, or ``*``); else If-Modified-Since."""
    if conditions.if_none_match is not None:
        tags = parse_entity_tags(conditions.if_none_match)
        return b"*" in tags or any(weak_match(tag, etag) for tag in tags)
    if conditions.if_modified_since is not None:
        since = parse_http_date(conditions.if_modified_since)
        return since is not None and mtime <= since
    return False


def if_range_holds(if_range: bytes, etag: bytes, mtime: int, now: float) -> bool:
    """§13.1.5: the range applies only if the validator still names this representation:
    an entity tag by strong comparison, or a date equal to Last-Modified, which only counts
    as strong once it is at least a second old (§8.8.2.2: the file may change again within
    the second its modification time names)."""
    value = if_range.strip()
    if value.startswith((b'"', b"W/")):
        tags = parse_entity_tags(value)
        return tags == [etag]  # a weak tag never matches strongly
    return parse_http_date(value) == mtime and now - mtime >= 1


def single_range(value: bytes, size: int) -> tuple[int, int] | None:
    """The byte range (first, last; inclusive) of a ``Range`` field to answer with 206 for a
    ``size``-byte file (RFC 9110 §14.1.2), parsed by the cache's ``parse_ranges``.

    None when the whole file is sent (200) instead: another unit, bad syntax, or several
    ranges that stay several after merging overlaps (multipart/byteranges is not built; §14.2
    lets a server ignore Range).  RangeNotSatisfiable (416) when no range lies in the file.
    """
    ranges = parse_ranges(value, size)
    if ranges is None:
        return None
    if not ranges:
        raise RangeNotSatisfiable(f"no byte range of {value!r} lies in the {size}-byte file", size)
    ranges = coalesce(ranges)
    return ranges[0] if len(ranges) == 1 else None


def content_range(first: int, last: int, size: int) -> bytes:
    return b"bytes %d-%d/%d" % (first, last, size)


def parse_accept_encoding(value: bytes) -> dict[str, float]:
    """Coding -> q-value (``x-gzip`` is ``gzip``); a malformed q counts as 0."""
    weights: dict[str, float] = {}
    for item in value.decode("latin-1").split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, number = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(number.strip()), 0.0), 1.0)
                except ValueError:
                    q = 0.0
                if q != q:  # NaN
                    q = 0.0
        weights["gzip" if coding == "x-gzip" else coding] = q
    return weights


def choose_coding(accept_encoding: bytes | None, available: Sequence[str]) -> str | None:
    """The content coding to serve among ``available`` sidecars (in server preference order),
    or None for the file itself.

    The highest q wins, ties go to the server's order, q=0 excludes; a coding not named takes
    the ``*`` weight.  The file itself (identity) is served when nothing is acceptable, when
    there is no Accept-Encoding, or when identity is named with a higher q than any coding.
    """
    if not accept_encoding or not available:
        return None
    weights = parse_accept_encoding(accept_encoding)
    default = weights.get("*", 0.0)
    best, best_q = None, 0.0
    for coding in available:
        q = weights.get(coding, default)
        if q > best_q:
            best, best_q = coding, q
    if best is not None and weights.get("identity", 0.0) > best_q:
        return None
    return best
