"""Range requests answered from a complete stored response (RFC 9110 §14, §13.1.5, §15.3.7,
§15.5.17) and how the lookup routes them (RFC 9111 §4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.decisions import Action, lookup_decision
from gateway.cache.fields import format_http_date
from gateway.cache.ranges import (
    MAX_RANGES,
    answer_range,
    coalesce,
    if_range_holds,
    parse_ranges,
)
from gateway.cache.storing import StoredResponse, make_stored_response

T0 = 1_700_000_000.0
BODY = bytes(range(100))  # 100 bytes, each byte its own position
ETAG = (b"etag", b'"v1"')
LAST_MODIFIED = format_http_date(T0 - 3600)
Pairs = list[tuple[bytes, bytes]]


def stored(*extra: tuple[bytes, bytes], status: int = 200, body: bytes = BODY) -> StoredResponse:
    headers = [
        (b"date", format_http_date(T0)),
        (b"cache-control", b"max-age=60"),
        (b"content-type", b"application/octet-stream"),
        ETAG,
        (b"last-modified", LAST_MODIFIED),
        *extra,
    ]
    return make_stored_response(status, headers, body, [], T0, T0)


def ranged(value: bytes, *extra: tuple[bytes, bytes]) -> Pairs:
    return [(b"range", value), *extra]


def header(headers: Pairs, name: bytes) -> bytes | None:
    values = [v for n, v in headers if n == name]
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


# --- parsing (RFC 9110 §14.1.1, §14.1.2) ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"bytes=0-9", [(0, 9)]),
        (b"bytes=90-", [(90, 99)]),
        (b"bytes=-10", [(90, 99)]),  # suffix-range: the last 10 bytes
        (b"bytes=-500", [(0, 99)]),  # a suffix longer than the body is the whole body
        (b"bytes=95-500", [(95, 99)]),  # last-pos past the end is clipped
        (b"BYTES = 0-0 , 5-6", [(0, 0), (5, 6)]),  # unit case-insensitive, OWS allowed
        (b"bytes=0-1,,3-4", [(0, 1), (3, 4)]),  # empty list elements are ignored
        (b"bytes=100-200", []),  # first-pos at the length: unsatisfiable
        (b"bytes=-0", []),  # a zero suffix-length is unsatisfiable
        (b"bytes=100-, 0-1", [(0, 1)]),  # unsatisfiable specs are dropped, others kept
    ],
)
def test_rfc9110_14_1_ranges(value: bytes, expected: list[tuple[int, int]]) -> None:
    assert parse_ranges(value, len(BODY)) == expected


@pytest.mark.parametrize(
    "value",
    [b"items=0-1", b"bytes", b"bytes=", b"bytes=5-1", b"bytes=a-b", b"bytes=-", b"bytes=1", b"0-1"],
)
def test_rfc9110_14_2_an_invalid_range_is_ignored(value: bytes) -> None:
    assert parse_ranges(value, len(BODY)) is None


def test_rfc9110_14_2_too_many_ranges_are_ignored() -> None:
    many = b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(MAX_RANGES + 1))
    assert parse_ranges(many, 1000) is None


@given(st.binary(max_size=60), st.integers(0, 200))
def test_range_parsing_never_raises(value: bytes, length: int) -> None:
    ranges = parse_ranges(value, length)
    for first, last in ranges or []:
        assert 0 <= first <= last < length


def test_rfc9110_15_3_7_2_overlapping_and_adjacent_ranges_are_coalesced() -> None:
    assert coalesce([(50, 60), (0, 10), (5, 20)]) == [(0, 20), (50, 60)]
    assert coalesce([(0, 9), (10, 19)]) == [(0, 19)]
    # Disjoint ranges keep the order they were asked in.
    assert coalesce([(50, 60), (0, 10)]) == [(50, 60), (0, 10)]


# --- If-Range (RFC 9110 §13.1.5) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "holds"),
    [
        (b'"v1"', True),
        (b'"v2"', False),
        (b'W/"v1"', False),  # If-Range needs the strong comparison
        (LAST_MODIFIED, True),  # Date is an hour after Last-Modified: a strong date
        (format_http_date(T0 - 7200), False),
        (b"not a date", False),
    ],
)
def test_rfc9110_13_1_5_if_range(value: bytes, holds: bool) -> None:
    assert if_range_holds(value, stored()) is holds


def test_rfc9110_13_1_5_weak_stored_etag_never_satisfies_if_range() -> None:
    entry = stored((b"etag", b'W/"v1"'))
    assert not if_range_holds(b'W/"v1"', entry)


def test_rfc9110_8_8_2_2_a_last_modified_within_the_dates_second_is_weak() -> None:
    entry = make_stored_response(
        200,
        [(b"date", format_http_date(T0)), (b"last-modified", format_http_date(T0))],
        BODY,
        [],
        T0,
        T0,
    )
    assert not if_range_holds(format_http_date(T0), entry)


# --- the answers (RFC 9110 §15.3.7, §14.6, §15.5.17) ----------------------------------------


def test_rfc9110_15_3_7_1_a_single_range() -> None:
    answer = answer_range(stored(), ranged(b"bytes=10-19"))
    assert answer is not None
    status, headers, body = answer
    assert (status, body) == (206, BODY[10:20])
    assert header(headers, b"content-range") == b"bytes 10-19/100"
    assert header(headers, b"content-length") == b"10"
    # The metadata a 200 would carry is kept (§15.3.7).
    assert header(headers, b"etag") == b'"v1"'
    assert header(headers, b"content-type") == b"application/octet-stream"


def test_rfc9110_14_6_multiple_ranges_make_multipart_byteranges() -> None:
    answer = answer_range(stored(), ranged(b"bytes=0-1, 98-99"), boundary=b"SEP")
    assert answer is not None
    status, headers, body = answer
    assert status == 206
    assert header(headers, b"content-type") == b"multipart/byteranges; boundary=SEP"
    assert header(headers, b"content-range") is None
    assert header(headers, b"content-length") == str(len(body)).encode()
    expected = (
        b"--SEP\r\ncontent-type: application/octet-stream\r\ncontent-range: bytes 0-1/100\r\n\r\n"
        + BODY[0:2]
        + b"\r\n--SEP\r\ncontent-type: application/octet-stream\r\n"
        b"content-range: bytes 98-99/100\r\n\r\n" + BODY[98:100] + b"\r\n--SEP--\r\n"
    )
    assert body == expected


def test_a_random_boundary_is_made_when_none_is_given() -> None:
    first = answer_range(stored(), ranged(b"bytes=0-1, 5-6"))
    second = answer_range(stored(), ranged(b"bytes=0-1, 5-6"))
    assert first is not None and second is not None
    assert header(first[1], b"content-type") != header(second[1], b"content-type")


def test_rfc9110_15_3_7_2_ranges_that_coalesce_into_one_get_a_single_part() -> None:
    answer = answer_range(stored(), ranged(b"bytes=0-10, 5-20"))
    assert answer is not None
    assert answer[0] == 206 and header(answer[1], b"content-range") == b"bytes 0-20/100"


def test_rfc9110_15_5_17_unsatisfiable_is_416_with_the_length() -> None:
    answer = answer_range(stored(), ranged(b"bytes=200-300"))
    assert answer is not None
    status, headers, body = answer
    assert (status, body) == (416, b"")
    assert header(headers, b"content-range") == b"bytes */100"
    assert header(headers, b"content-length") == b"0"
    assert header(headers, b"content-type") is None


@pytest.mark.parametrize(
    ("entry", "request_headers"),
    [
        (stored(), ranged(b"bytes=0-1", (b"if-range", b'"old"'))),  # If-Range false: all
        (stored(), ranged(b"lines=0-1")),  # not a byte range
        (stored(status=404), ranged(b"bytes=0-1")),  # Range applies to a 200 only
        (stored(body=b""), ranged(b"bytes=0-1")),  # nothing to cut from
        (stored(), [(b"range", b"bytes=0-1"), (b"range", b"bytes=2-3")]),  # two fields
    ],
)
def test_whole_response_when_the_range_does_not_apply(
    entry: StoredResponse, request_headers: Pairs
) -> None:
    assert answer_range(entry, request_headers) is None


# --- through the lookup (RFC 9111 §4; RFC 9110 §13.2.2 order of evaluation) ----------------


def test_a_fresh_hit_answers_the_range_from_the_cache() -> None:
    decision = lookup_decision(stored(), "GET", ranged(b"bytes=0-3"), T0 + 1)
    assert decision.action is Action.HIT and decision.answer is not None
    assert decision.answer.status == 206 and decision.answer.body == BODY[:4]
    assert header(decision.answer.headers, b"x-cache") == b"HIT"
    assert header(decision.answer.headers, b"age") == b"1"


def test_rfc9110_13_2_2_a_matching_if_none_match_wins_over_range() -> None:
    request = ranged(b"bytes=0-3", (b"if-none-match", b'"v1"'))
    decision = lookup_decision(stored(), "GET", request, T0 + 1)
    assert decision.action is Action.NOT_MODIFIED


def test_rfc9110_14_2_head_ignores_range() -> None:
    decision = lookup_decision(stored(), "HEAD", ranged(b"bytes=0-3"), T0 + 1)
    assert decision.answer is not None and decision.answer.status == 200
    assert decision.answer.body == b""


def test_if_range_without_range_is_ignored() -> None:
    decision = lookup_decision(stored(), "GET", [(b"if-range", b'"other"')], T0 + 1)
    assert decision.action is Action.HIT and decision.answer is not None
    assert decision.answer.status == 200 and decision.answer.body == BODY


@pytest.mark.parametrize(
    "cache_control",
    [b"max-age=1", b"max-age=1, stale-while-revalidate=600"],  # revalidate / refresh
)
def test_a_range_the_stored_response_cannot_answer_as_it_is_bypasses(
    cache_control: bytes,
) -> None:
    entry = make_stored_response(200, [(b"cache-control", cache_control), ETAG], BODY, [], T0, T0)
    decision = lookup_decision(entry, "GET", ranged(b"bytes=0-3"), T0 + 10)
    assert (decision.action, decision.detail) == (Action.BYPASS, "range")
    # Without the Range the same request is revalidated or served stale.
    plain = lookup_decision(entry, "GET", [], T0 + 10)
    assert plain.action in (Action.REVALIDATE, Action.STALE_WHILE_REVALIDATE)


def test_positions_with_thousands_of_digits_mean_beyond_the_end() -> None:
    """int() refuses over 4,300 digits; such a position is past any body, never a crash."""
    huge = b"9" * 5000
    assert parse_ranges(b"bytes=0-" + huge, 100) == [(0, 99)]
    assert parse_ranges(b"bytes=" + huge + b"-", 100) == []
    assert parse_ranges(b"bytes=-" + huge, 100) == [(0, 99)]
