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
from gateway.cache.storing import (
    NOT_STORED,
    StoredResponse,
    derive_entry,
    split_targeted,
    stored_fields,
)
from gateway.cache.targeted import effective_cache_control
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


def updates_entry(entry: StoredResponse, not_modified_headers: HeaderPairs) -> bool:
    """Whether a 304 is about ``entry`` (RFC 9111 §4.3.4): a strong ETag in it must be the
    entry's own strong ETag, a weak one must match the entry's weakly (RFC 9110 §8.8.3.2);
    without an ETag, a Last-Modified in it must equal the entry's.  A 304 with no validator
    at all answers the conditional request made from this entry's validators, so it is taken
    as confirming it (§4.3.4's "no validator" case, narrowed to the one entry asked about).
    """
    new_etag = first_value(not_modified_headers, b"etag")
    if new_etag is not None:
        new_etag = new_etag.strip()
        if entry.etag is None:
            return False
        if new_etag.startswith(b"W/"):
            return weak_match(new_etag, entry.etag)
        return new_etag == entry.etag
    new_last_modified = first_value(not_modified_headers, b"last-modified")
    if new_last_modified is not None and entry.last_modified is not None:
        return parse_http_date(new_last_modified) == entry.last_modified
    return True


def freshen(
    entry: StoredResponse,
    not_modified_headers: HeaderPairs,
    request_time: float,
    response_time: float,
) -> StoredResponse | None:
    """The entry updated by a 304 to our conditional request (RFC 9111 §4.3.3, §4.3.4, §3.2).

    Every field of the 304 replaces all stored lines of that name (§3.2), except framing,
    Content-Encoding and Content-Range (what the stored body is), hop-by-hop fields and
    those a ``no-cache="..."``/``private="..."`` in force excludes; a targeted field of ours
    (RFC 9213) replaces the one kept aside.  Age and freshness restart from this exchange.
    None when the 304 is not about this entry (``updates_entry``) or now forbids storing
    (no-store, private): drop the entry and fetch the resource anew.
    """
    not_modified_headers = lowered(not_modified_headers)
    if not updates_entry(entry, not_modified_headers):
        return None
    policy = entry.policy
    updates, new_targeted = split_targeted(
        stored_fields(not_modified_headers, _NOT_UPDATED), policy
    )
    targeted = new_targeted or list(entry.targeted or [])
    updated_names = {name for name, _ in updates}
    # Without a Date in the 304 the old one would make the entry look old at once.
    updated_names.add(b"date")
    headers = [(n, v) for n, v in entry.headers if n not in updated_names] + updates
    cc, _ = effective_cache_control([*targeted, *headers], policy.targeted_fields)
    if (cc.no_store and not cc.must_understand) or cc.private:
        return None
    if cc.unshared_fields:
        headers = [(n, v) for n, v in headers if n not in cc.unshared_fields]
    age_only = [(b"age", age) for age in header_lines(not_modified_headers, b"age")[:1]]
    return derive_entry(
        entry.status,
        headers,
        entry.body,
        entry.vary,
        age_only,
        request_time,
        response_time,
        targeted=targeted,
        policy=policy,
    )
