"""What is stored and served of a response's fields: qualified no-cache/private (RFC 9111
§5.2.2.4, §5.2.2.7), Set-Cookie, Vary normalisation (§4.1), 304s from the upstream (§4.3.4,
§3.2) and If-Modified-Since without Last-Modified (§4.3.2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.conditional import freshen, not_modified, updates_entry
from gateway.cache.decisions import Action, lookup_decision
from gateway.cache.fields import format_http_date
from gateway.cache.keys import normalized_preferences, vary_key
from gateway.cache.store import ResponseCache
from gateway.cache.storing import StoredResponse, make_stored_response

T0 = 1_700_000_000.0
DATE = (b"date", format_http_date(T0))
Pairs = list[tuple[bytes, bytes]]


def names(headers: Pairs) -> set[bytes]:
    return {name for name, _ in headers}


def header(headers: Pairs, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


# --- qualified no-cache / private, Set-Cookie -----------------------------------------------


@pytest.mark.parametrize(
    "directives",
    [b'max-age=60, private="X-User, Set-Cookie"', b'max-age=60, no-cache="x-user,set-cookie"'],
)
def test_rfc9111_5_2_2_listed_fields_are_not_stored(directives: bytes) -> None:
    headers = [
        DATE,
        (b"cache-control", directives),
        (b"x-user", b"alice"),
        (b"set-cookie", b"sid=alice"),
        (b"x-kept", b"1"),
    ]
    entry = make_stored_response(200, headers, b"x", [], T0, T0)
    assert b"x-user" not in names(entry.headers) and b"set-cookie" not in names(entry.headers)
    assert header(entry.headers, b"x-kept") == [b"1"]
    answer = lookup_decision(entry, "GET", [], T0 + 1).answer
    assert answer is not None and b"set-cookie" not in names(answer.headers)
    # Qualified no-cache does not make the rest of the response need revalidation.
    assert not entry.cache_control.no_cache


def test_rfc9111_5_2_2_4_listed_fields_are_not_brought_back_by_a_304() -> None:
    headers = [
        DATE,
        (b"etag", b'"a"'),
        (b"cache-control", b'max-age=5, private="set-cookie"'),
    ]
    entry = make_stored_response(200, headers, b"x", [], T0, T0)
    fresh = freshen(entry, [(b"etag", b'"a"'), (b"set-cookie", b"sid=bob")], T0 + 9, T0 + 9)
    assert fresh is not None and b"set-cookie" not in names(fresh.headers)


# --- Vary normalisation (§4.1) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (b"gzip, br", b"br, gzip"),
        (b"gzip, br", b"BR;q=1.0, GZip"),
        (b"gzip;q=0.5, br", b"br , gzip; Q=0.50"),
        (b"en-US, en;q=0.9", b"en-us,en;q=0.900"),
        (b"gzip, gzip", b"gzip"),  # a repeated member says nothing new
    ],
)
def test_rfc9111_4_1_equivalent_preference_lists_select_the_same_variant(
    a: bytes, b: bytes
) -> None:
    assert normalized_preferences([a]) == normalized_preferences([b])


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (b"gzip", b"br"),
        (b"gzip;q=0.5, br", b"gzip, br;q=0.5"),  # the weights differ
        (b"gzip;q=0", b"gzip"),  # q=0 means "not acceptable"
        (b"gzip;q=2", b"gzip"),  # an invalid weight is never equal to a valid one
    ],
)
def test_rfc9111_4_1_different_preferences_stay_apart(a: bytes, b: bytes) -> None:
    assert normalized_preferences([a]) != normalized_preferences([b])


@given(st.lists(st.binary(max_size=40), max_size=3))
def test_preference_normalisation_never_raises_and_is_idempotent(lines: list[bytes]) -> None:
    once = normalized_preferences(lines)
    assert normalized_preferences([once]) == once


def test_normalised_form() -> None:
    assert normalized_preferences([b"GZIP;q=0.50, br", b"identity;q=0"]) == (
        b"br, gzip;q=0.5, identity;q=0"
    )


def test_rfc9111_4_1_the_store_serves_an_equivalent_request() -> None:
    cache = ResponseCache(1 << 20, 1 << 20)
    response = [DATE, (b"cache-control", b"max-age=60"), (b"vary", b"Accept-Encoding")]
    request = [(b"accept-encoding", b"gzip, deflate, br")]
    cache.put("k", make_stored_response(200, response, b"x", request, T0, T0))
    again = [(b"accept-encoding", b"br,gzip,   deflate")]
    assert cache.lookup("k", "GET", again, T0 + 1).action is Action.HIT
    assert vary_key(again, [b"accept-encoding"]) == vary_key(request, [b"accept-encoding"])
    other = [(b"accept-encoding", b"identity")]
    assert cache.lookup("k", "GET", other, T0 + 1).action is Action.MISS


# --- 304 from the upstream (§4.3.4, §3.2) ---------------------------------------------------


def stored(*extra: tuple[bytes, bytes]) -> StoredResponse:
    headers = [DATE, (b"cache-control", b"max-age=1"), *extra]
    return make_stored_response(200, headers, b"body", [], T0, T0)


@pytest.mark.parametrize(
    ("stored_etag", "new_etag", "applies"),
    [
        (b'"a"', b'"a"', True),
        (b'"a"', b'"b"', False),
        (b'W/"a"', b'W/"a"', True),
        (b'"a"', b'W/"a"', True),  # a weak validator matching weakly: the entry is updated
        (b'W/"a"', b'"a"', False),  # a strong one must be the entry's own strong validator
    ],
)
def test_rfc9111_4_3_4_which_stored_response_a_304_updates(
    stored_etag: bytes, new_etag: bytes, applies: bool
) -> None:
    entry = stored((b"etag", stored_etag))
    assert updates_entry(entry, [(b"etag", new_etag)]) is applies
    assert (freshen(entry, [(b"etag", new_etag)], T0 + 5, T0 + 5) is not None) is applies


def test_rfc9111_3_2_a_304_replaces_fields_but_not_framing_encoding_or_range() -> None:
    entry = stored(
        (b"etag", b'"a"'),
        (b"content-encoding", b"gzip"),
        (b"content-type", b"text/plain"),
        (b"x-custom", b"old"),
        (b"x-custom", b"older"),
    )
    update = [
        (b"etag", b'"a"'),
        (b"cache-control", b"max-age=100"),
        (b"x-custom", b"new"),
        (b"content-type", b"text/html"),
        (b"content-encoding", b"br"),
        (b"content-length", b"0"),
        (b"content-range", b"bytes 0-1/4"),
        (b"transfer-encoding", b"chunked"),
        (b"x-added", b"1"),
    ]
    fresh = freshen(entry, update, T0 + 5, T0 + 5)
    assert fresh is not None
    assert header(fresh.headers, b"x-custom") == [b"new"]  # all old lines replaced
    assert header(fresh.headers, b"content-type") == [b"text/html"]
    assert header(fresh.headers, b"content-encoding") == [b"gzip"]
    assert header(fresh.headers, b"content-length") == [b"4"]
    assert header(fresh.headers, b"content-range") == []
    assert header(fresh.headers, b"transfer-encoding") == []
    assert header(fresh.headers, b"x-added") == [b"1"]
    assert fresh.freshness_lifetime == 100 and fresh.body == b"body"


def test_rfc9111_4_3_4_a_must_understand_304_keeps_the_entry() -> None:
    entry = stored((b"etag", b'"a"'))
    update = [(b"etag", b'"a"'), (b"cache-control", b"must-understand, no-store, max-age=9")]
    fresh = freshen(entry, update, T0 + 5, T0 + 5)
    assert fresh is not None and fresh.freshness_lifetime == 9


# --- If-Modified-Since without Last-Modified (§4.3.2) ----------------------------------------


def test_rfc9111_4_3_2_if_modified_since_copied_from_the_added_date_matches() -> None:
    # No Date from the upstream: the Date we add is whole seconds; a client that copies it
    # into If-Modified-Since gets a 304.
    entry = make_stored_response(200, [(b"cache-control", b"max-age=60")], b"x", [], T0, T0 + 0.6)
    sent_date = header(entry.headers, b"date")[0]
    assert not_modified(entry, [(b"if-modified-since", sent_date)])
    earlier = format_http_date(T0 - 10)
    assert not not_modified(entry, [(b"if-modified-since", earlier)])


def test_rfc9111_4_3_2_if_modified_since_against_the_stored_date() -> None:
    entry = stored()
    decision = lookup_decision(entry, "GET", [(b"if-modified-since", DATE[1])], T0)
    assert decision.action is Action.NOT_MODIFIED
    newer = lookup_decision(entry, "GET", [(b"if-modified-since", format_http_date(T0 - 1))], T0)
    assert newer.action is Action.HIT
