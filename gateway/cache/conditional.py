"""Conditional requests around stored responses (RFC 9110 §13, RFC 9111 §4.3).

Two directions: the client's own If-None-Match / If-Modified-Since answered 304 from an
entry (``not_modified``), and our revalidation of a stale entry upstream
(``revalidation_request_headers``) whose 304 refreshes it (``freshen``).
"""

from __future__ import annotations

from gateway.cache.fields import (
    HeaderPairs,
    first_value,
    header_lines,
    lowered,
    parse_http_date,
)
from gateway.cache.storing import NOT_STORED, StoredResponse, derive_entry, stored_fields
from gateway.headers import Headers

# A 304 must not change how the stored body is framed or encoded (RFC 9111 §3.2).
_NOT_UPDATED = NOT_STORED | {b"content-encoding", b"content-range"}


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
    last_modified = first_value(entry.headers, b"last-modified")
    if last_modified is not None:
        conditions.append((b"if-modified-since", last_modified))
    return conditions


def revalidation_request_headers(request_headers: HeaderPairs, entry: StoredResponse) -> Headers:
    """The client's request headers with its own validators replaced by the entry's, so the
    upstream's 304 is about what we store (RFC 9111 §4.3.1, §4.3.2).  The client's
    conditional is then evaluated against the refreshed entry by ``answer_from_entry``."""
    kept = [(n, v) for n, v in request_headers if n not in (b"if-none-match", b"if-modified-since")]
    return kept + conditional_request_headers(entry)


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
    not_modified_headers = lowered(not_modified_headers)
    new_etag = first_value(not_modified_headers, b"etag")
    new_last_modified = first_value(not_modified_headers, b"last-modified")
    if new_etag is not None:
        if entry.etag is None or new_etag.strip() != entry.etag:
            return None
    elif new_last_modified is not None and entry.last_modified is not None:
        if parse_http_date(new_last_modified) != entry.last_modified:
            return None
    updates = stored_fields(not_modified_headers, _NOT_UPDATED)
    updated_names = {name for name, _ in updates}
    # Without a Date in the 304 the old one would make the entry look old at once.
    updated_names.add(b"date")
    headers = [(n, v) for n, v in entry.headers if n not in updated_names] + updates
    age_only = [(b"age", age) for age in header_lines(not_modified_headers, b"age")[:1]]
    fresh = derive_entry(
        entry.status, headers, entry.body, entry.vary, age_only, request_time, response_time
    )
    if fresh.cache_control.no_store or fresh.cache_control.private:
        return None
    return fresh
