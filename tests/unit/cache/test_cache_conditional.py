"""Conditional requests: the client's against a stored response (RFC 9110 §13, RFC 9111 §4.3.2),
ours against the upstream (RFC 9111 §4.3.1) and freshening with a 304 (§4.3.4, §3.2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.conditional import (
    conditional_request_headers,
    freshen,
    not_modified,
    parse_entity_tags,
    revalidation_request_headers,
    weak_match,
)
from gateway.cache.decisions import Action, answer_revalidated, lookup_decision
from gateway.cache.fields import format_http_date
from gateway.cache.freshness import current_age
from gateway.cache.storing import StoredResponse, make_stored_response

Pairs = list[tuple[bytes, bytes]]
T0 = 1_700_000_000.0
LAST_MODIFIED = format_http_date(T0 - 3600)


def stored(
    *extra: tuple[bytes, bytes], status: int = 200, cc: bytes = b"max-age=60"
) -> StoredResponse:
    headers = [(b"date", format_http_date(T0)), (b"cache-control", cc), *extra]
    return make_stored_response(status, headers, b"hello", [], T0, T0)


def header(headers: Pairs, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


# --- entity tags (RFC 9110 §8.8.3) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        (b'"a"', [b'"a"']),
        (b'W/"a"', [b'W/"a"']),
        (b'"a", W/"b" ,"c"', [b'"a"', b'W/"b"', b'"c"']),
        (b'"a,b", "c"', [b'"a,b"', b'"c"']),  # etagc includes the comma
        (b"*", [b"*"]),
        (b"abc, def", [b"abc", b"def"]),  # unquoted, lenient
        (b'"unterminated', [b'"unterminated']),
        (b"", []),
        (b" , ,", []),
    ],
)
def test_rfc9110_8_8_3_entity_tag_lists(value: bytes, tags: list[bytes]) -> None:
    assert parse_entity_tags(value) == tags


@given(st.binary(max_size=80))
def test_entity_tag_parser_never_raises(value: bytes) -> None:
    parse_entity_tags(value)


@pytest.mark.parametrize(
    ("a", "b", "weak_equal"),
    [
        (b'W/"1"', b'W/"1"', True),
        (b'W/"1"', b'W/"2"', False),
        (b'W/"1"', b'"1"', True),
        (b'"1"', b'"1"', True),
    ],
)
def test_rfc9110_8_8_3_2_weak_comparison(a: bytes, b: bytes, weak_equal: bool) -> None:
    assert weak_match(a, b) is weak_equal


# --- the client's conditional request -------------------------------------------------------


@pytest.mark.parametrize(
    ("stored_etag", "if_none_match", "expected"),
    [
        (b'"v1"', b'"v1"', True),
        (b'"v1"', b'W/"v1"', True),  # §13.1.2: weak comparison
        (b'W/"v1"', b'"v1"', True),
        (b'"v1"', b'"v0", "v1"', True),
        (b'"v1"', b'"v0", "v2"', False),
        (b'"v1"', b"*", True),
        (None, b"*", True),  # any current representation matches *
        (None, b'"v1"', False),
    ],
)
def test_rfc9110_13_1_2_if_none_match(
    stored_etag: bytes | None, if_none_match: bytes, expected: bool
) -> None:
    entry = stored(*([(b"etag", stored_etag)] if stored_etag else []))
    assert not_modified(entry, [(b"if-none-match", if_none_match)]) is expected


def test_rfc9110_13_1_2_if_none_match_over_several_lines() -> None:
    entry = stored((b"etag", b'"v1"'))
    request = [(b"if-none-match", b'"v0"'), (b"if-none-match", b'"v1"')]
    assert not_modified(entry, request)


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        (T0 - 3600, True),  # equal to Last-Modified
        (T0, True),
        (T0 - 3601, False),
    ],
)
def test_rfc9110_13_1_3_if_modified_since(since: float, expected: bool) -> None:
    entry = stored((b"last-modified", LAST_MODIFIED))
    assert not_modified(entry, [(b"if-modified-since", format_http_date(since))]) is expected


def test_rfc9111_4_3_2_if_modified_since_uses_date_without_last_modified() -> None:
    entry = stored()
    assert not_modified(entry, [(b"if-modified-since", format_http_date(T0))])
    assert not not_modified(entry, [(b"if-modified-since", format_http_date(T0 - 1))])


def test_rfc9110_13_1_3_invalid_if_modified_since_is_ignored() -> None:
    entry = stored((b"last-modified", LAST_MODIFIED))
    assert not not_modified(entry, [(b"if-modified-since", b"yesterday")])


def test_rfc9110_13_2_2_if_none_match_takes_precedence_over_if_modified_since() -> None:
    entry = stored((b"etag", b'"v2"'), (b"last-modified", LAST_MODIFIED))
    request = [(b"if-none-match", b'"v1"'), (b"if-modified-since", format_http_date(T0))]
    assert not not_modified(entry, request)


def test_rfc9110_13_2_1_preconditions_only_apply_to_2xx() -> None:
    entry = stored((b"etag", b'"v1"'), status=404)
    assert not not_modified(entry, [(b"if-none-match", b"*")])


def test_rfc9110_15_4_5_not_modified_answer_from_a_fresh_entry() -> None:
    entry = stored(
        (b"etag", b'"v1"'),
        (b"expires", format_http_date(T0 + 60)),
        (b"vary", b"accept-encoding"),
        (b"content-location", b"/doc.en"),
        (b"last-modified", LAST_MODIFIED),
        (b"content-type", b"text/html"),
        (b"x-custom", b"1"),
    )
    decision = lookup_decision(entry, "GET", [(b"if-none-match", b'W/"v1"')], T0 + 5)
    assert decision.action is Action.NOT_MODIFIED and decision.answer is not None
    answer = decision.answer
    assert (answer.status, answer.body) == (304, b"")
    names = {name for name, _ in answer.headers}
    assert names == {
        b"date",
        b"cache-control",
        b"etag",
        b"expires",
        b"vary",
        b"content-location",
        b"last-modified",
        b"age",
        b"cache-status",
        b"x-cache",
    }
    assert header(answer.headers, b"cache-status") == [b"gateway; hit; ttl=55"]


def test_rfc9111_4_3_2_client_conditional_on_a_stale_entry_is_not_answered() -> None:
    entry = stored((b"etag", b'"v1"'))
    decision = lookup_decision(entry, "GET", [(b"if-none-match", b'"v1"')], T0 + 100)
    assert decision.action is Action.REVALIDATE and decision.answer is None


# --- our conditional request (RFC 9111 §4.3.1) ----------------------------------------------


def test_rfc9111_4_3_1_conditional_request_headers() -> None:
    both = stored((b"etag", b'"v1"'), (b"last-modified", LAST_MODIFIED))
    assert conditional_request_headers(both) == [
        (b"if-none-match", b'"v1"'),
        (b"if-modified-since", LAST_MODIFIED),
    ]
    assert conditional_request_headers(stored()) == []


def test_rfc9111_4_3_1_revalidation_replaces_the_clients_validators() -> None:
    entry = stored((b"etag", b'"v2"'))
    request = [
        (b"accept", b"*/*"),
        (b"if-none-match", b'"v1"'),
        (b"if-modified-since", LAST_MODIFIED),
    ]
    assert revalidation_request_headers(request, entry) == [
        (b"accept", b"*/*"),
        (b"if-none-match", b'"v2"'),
    ]


# --- freshening with a 304 (RFC 9111 §4.3.4, §3.2) ------------------------------------------


def test_rfc9111_4_3_4_freshen_replaces_headers_and_restarts_age() -> None:
    entry = stored(
        (b"etag", b'"v1"'),
        (b"content-type", b"text/plain"),
        (b"x-old", b"1"),
        cc=b"max-age=60",
    )
    not_modified_headers = [
        (b"date", format_http_date(T0 + 500)),
        (b"etag", b'"v1"'),
        (b"cache-control", b"max-age=120"),
        (b"x-old", b"2"),
        (b"content-length", b"0"),  # a 304's framing must not touch the stored body's
        (b"connection", b"keep-alive"),
        (b"age", b"4"),
    ]
    fresh = freshen(entry, not_modified_headers, T0 + 499, T0 + 500)
    assert fresh is not None
    assert fresh.body == b"hello" and fresh.status == 200
    assert header(fresh.headers, b"cache-control") == [b"max-age=120"]
    assert header(fresh.headers, b"x-old") == [b"2"]
    assert header(fresh.headers, b"content-type") == [b"text/plain"]
    assert header(fresh.headers, b"content-length") == [b"5"]
    assert header(fresh.headers, b"date") == [format_http_date(T0 + 500)]
    assert header(fresh.headers, b"connection") == []
    assert fresh.freshness_lifetime == 120
    assert fresh.corrected_initial_age == 5  # Age 4 + 1 s round trip
    assert current_age(fresh, T0 + 510) == 15
    assert lookup_decision(fresh, "GET", [], T0 + 510).action is Action.HIT


def test_rfc9111_4_3_4_304_without_date_gets_the_response_time() -> None:
    entry = stored((b"etag", b'"v1"'))
    fresh = freshen(entry, [(b"cache-control", b"max-age=60")], T0 + 300, T0 + 300)
    assert fresh is not None
    assert header(fresh.headers, b"date") == [format_http_date(T0 + 300)]
    assert current_age(fresh, T0 + 310) == 10


def test_rfc9111_4_3_4_304_about_another_validator_does_not_apply() -> None:
    entry = stored((b"etag", b'"v1"'), (b"last-modified", LAST_MODIFIED))
    assert freshen(entry, [(b"etag", b'"v2"')], T0, T0) is None
    other_date = format_http_date(T0)
    only_dates = stored((b"last-modified", LAST_MODIFIED))
    assert freshen(only_dates, [(b"last-modified", other_date)], T0, T0) is None
    assert freshen(only_dates, [(b"last-modified", LAST_MODIFIED)], T0, T0) is not None


def test_freshen_refuses_a_304_that_now_forbids_storing() -> None:
    entry = stored((b"etag", b'"v1"'))
    assert freshen(entry, [(b"cache-control", b"no-store")], T0, T0) is None
    assert freshen(entry, [(b"cache-control", b"private, max-age=9")], T0, T0) is None


def test_answer_revalidated_is_marked_revalidated_and_answers_client_conditionals() -> None:
    entry = stored((b"etag", b'"v1"'))
    decision = lookup_decision(entry, "GET", [], T0 + 100)
    assert decision.action is Action.REVALIDATE
    fresh = freshen(entry, [(b"date", format_http_date(T0 + 100))], T0 + 100, T0 + 100)
    assert fresh is not None
    answer = answer_revalidated(decision, fresh, "GET", [], T0 + 100)
    assert (answer.status, answer.body) == (200, b"hello")
    assert header(answer.headers, b"x-cache") == [b"REVALIDATED"]
    assert header(answer.headers, b"cache-status") == [
        b"gateway; fwd=stale; fwd-status=304; ttl=60"
    ]
    conditional = answer_revalidated(
        decision, fresh, "GET", [(b"if-none-match", b'"v1"')], T0 + 100
    )
    assert conditional.status == 304
