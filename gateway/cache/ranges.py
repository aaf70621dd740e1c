"""Range requests answered from a complete stored response (RFC 9110 §14, §13.1.5, §15.3.7).

The cache stores only complete responses; a GET with ``Range`` on a usable stored 200 is
answered here with 206 (one part, or ``multipart/byteranges`` for several, §14.6) or 416
(nothing satisfiable, §15.5.17).  ``If-Range`` (§13.1.5) turns the Range off unless it names
the stored response by a strong validator.  Anything this cache cannot answer exactly (an
invalid or non-byte Range, an empty or non-200 entry, too many ranges) gets the whole
response: §14.2 lets a server ignore a Range it does not want to honour.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from gateway.cache.conditional import parse_entity_tags
from gateway.cache.fields import HeaderPairs, first_value, header_lines, parse_http_date
from gateway.cache.storing import StoredResponse
from gateway.headers import Headers

# More ranges than this in one request is a broken client or an attack (§14.2): ignored.
MAX_RANGES = 64
# Fields describing the whole body, replaced in a partial answer (§15.3.7).
_WHOLE_BODY_FIELDS = frozenset({b"content-length", b"content-range"})
# What a 416 keeps of the stored response's fields: metadata, not the body's framing.
_UNSATISFIABLE_FIELDS = frozenset(
    {b"cache-control", b"date", b"etag", b"expires", b"last-modified", b"vary"}
)

ByteRange = tuple[int, int]  # first and last byte position, inclusive


def parse_ranges(value: bytes, length: int) -> list[ByteRange] | None:
    """The satisfiable byte ranges of a ``Range`` value for a body of ``length`` bytes, clipped
    to it (RFC 9110 §14.1.1, §14.1.2); ``[]`` when none is satisfiable (416); None when the
    Range is to be ignored: not ``bytes``, invalid, or more than MAX_RANGES specs."""
    unit, equals, specs = value.partition(b"=")
    if not equals or unit.strip().lower() != b"bytes":
        return None
    parts = [part.strip() for part in specs.split(b",")]
    parts = [part for part in parts if part]  # empty list elements are allowed (§5.6.1)
    if not parts or len(parts) > MAX_RANGES:
        return None
    satisfiable: list[ByteRange] = []
    for part in parts:
        first_text, dash, last_text = part.partition(b"-")
        first_text, last_text = first_text.strip(), last_text.strip()
        if not dash or not _digits(first_text, last_text):
            return None
        if not first_text:  # suffix-range: the last N bytes
            if not last_text:
                return None
            suffix = _position(last_text)
            if suffix > 0 and length > 0:
                satisfiable.append((max(0, length - suffix), length - 1))
            continue
        first = _position(first_text)
        last = _position(last_text) if last_text else None
        if last is not None and last < first:
            return None  # an invalid range-spec invalidates the ranges-specifier
        if first < length:
            satisfiable.append((first, length - 1 if last is None else min(last, length - 1)))
    return satisfiable


# Positions past any body we could hold; more digits than this mean "beyond the end" (and
# int() of over 4,300 digits would raise: Python's limit on long digit strings).
HUGE_POSITION = 10**18


def _position(text: bytes) -> int:
    return int(text) if len(text) <= 18 else HUGE_POSITION


def _digits(*texts: bytes) -> bool:
    return all(not text or (text.isdigit() and text.isascii()) for text in texts)


def coalesce(ranges: Sequence[ByteRange]) -> list[ByteRange]:
    """Overlapping or adjacent ranges merged (§15.3.7.2 allows it whatever their order);
    ranges that neither overlap nor touch keep the order they were asked in."""
    ordered = sorted(ranges)
    merged: list[ByteRange] = []
    for first, last in ordered:
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    if len(merged) == len(ranges):
        return list(ranges)
    return merged


def if_range_holds(value: bytes, entry: StoredResponse) -> bool:
    """RFC 9110 §13.1.5: an entity-tag must equal the entry's by the strong comparison; a
    date must equal its Last-Modified, which must be strong: §8.8.2.2 lets a cache count it
    strong when the entry's Date is at least a second later."""
    value = value.strip()
    if value.startswith((b'"', b"W/")):
        tags = parse_entity_tags(value)
        etag = entry.etag
        return (
            len(tags) == 1 and etag is not None and not etag.startswith(b"W/") and tags[0] == etag
        )
    date = parse_http_date(value)
    modified = entry.last_modified
    return (
        date is not None
        and modified is not None
        and date == modified
        and entry.date - modified >= 1.0
    )


def content_range(first: int, last: int, length: int) -> bytes:
    return b"bytes %d-%d/%d" % (first, last, length)


def answer_range(
    entry: StoredResponse, request_headers: HeaderPairs, *, boundary: bytes | None = None
) -> tuple[int, Headers, bytes] | None:
    """(status, headers, body) answering a GET's Range from ``entry``, or None to send the
    whole stored response.  ``boundary`` is for tests; a random one is made otherwise."""
    ranges_lines = header_lines(request_headers, b"range")
    if len(ranges_lines) != 1 or entry.status != 200:
        return None
    body = entry.body
    length = len(body)
    if length == 0:
        return None
    if_range = first_value(request_headers, b"if-range")
    if if_range is not None and not if_range_holds(if_range, entry):
        return None
    ranges = parse_ranges(ranges_lines[0], length)
    if ranges is None:
        return None
    if not ranges:
        kept = [(n, v) for n, v in entry.headers if n in _UNSATISFIABLE_FIELDS]
        kept += [(b"content-range", b"bytes */%d" % length), (b"content-length", b"0")]
        return 416, kept, b""
    ranges = coalesce(ranges)
    headers = [(n, v) for n, v in entry.headers if n not in _WHOLE_BODY_FIELDS]
    if len(ranges) == 1:
        first, last = ranges[0]
        part = body[first : last + 1]
        headers += [
            (b"content-range", content_range(first, last, length)),
            (b"content-length", b"%d" % len(part)),
        ]
        return 206, headers, part
    return _multipart(entry, headers, ranges, boundary or secrets.token_hex(16).encode())


def _multipart(
    entry: StoredResponse, headers: Headers, ranges: list[ByteRange], boundary: bytes
) -> tuple[int, Headers, bytes]:
    """A ``multipart/byteranges`` 206 (RFC 9110 §14.6): each part carries the stored
    Content-Type and its own Content-Range; the response's Content-Type is the multipart."""
    body = entry.body
    length = len(body)
    content_type = first_value(entry.headers, b"content-type")
    chunks: list[bytes] = []
    for first, last in ranges:
        chunks.append(b"--" + boundary + b"\r\n")
        if content_type is not None:
            chunks.append(b"content-type: " + content_type + b"\r\n")
        chunks.append(b"content-range: " + content_range(first, last, length) + b"\r\n\r\n")
        chunks.append(body[first : last + 1])
        chunks.append(b"\r\n")
    chunks.append(b"--" + boundary + b"--\r\n")
    payload = b"".join(chunks)
    headers = [(n, v) for n, v in headers if n != b"content-type"]
    headers += [
        (b"content-type", b"multipart/byteranges; boundary=" + boundary),
        (b"content-length", b"%d" % len(payload)),
    ]
    return 206, headers, payload
