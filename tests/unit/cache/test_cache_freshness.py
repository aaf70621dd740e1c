"""Freshness lifetime (RFC 9111 §4.2.1), age (§4.2.3) and what is kept of a response (§3.1)."""

from __future__ import annotations

import pytest

from gateway.cache.fields import MAX_DELTA, format_http_date
from gateway.cache.freshness import corrected_initial_age, current_age, freshness_lifetime
from gateway.cache.storing import make_stored_response

T0 = 1_700_000_000.0
DATE = format_http_date(T0)


def lifetime(*headers: tuple[bytes, bytes], response_time: float = T0) -> float | None:
    return freshness_lifetime(list(headers), response_time)


def test_rfc9111_4_2_1_s_maxage_wins_for_a_shared_cache() -> None:
    headers = [
        (b"cache-control", b"max-age=10, s-maxage=99"),
        (b"expires", format_http_date(T0 + 5)),
        (b"date", DATE),
    ]
    assert lifetime(*headers) == 99


def test_rfc9111_4_2_1_max_age_wins_over_expires() -> None:
    assert (
        lifetime((b"cache-control", b"max-age=10"), (b"expires", format_http_date(T0 + 500))) == 10
    )


def test_rfc9111_4_2_1_expires_minus_date() -> None:
    assert lifetime((b"date", DATE), (b"expires", format_http_date(T0 + 300))) == 300


def test_rfc9111_4_2_1_expires_without_date_uses_response_time() -> None:
    expires = (b"expires", format_http_date(T0 + 300))
    assert lifetime(expires, response_time=T0 + 100) == 200


def test_rfc9111_4_2_1_expires_in_the_past_is_zero() -> None:
    assert lifetime((b"date", DATE), (b"expires", format_http_date(T0 - 300))) == 0


@pytest.mark.parametrize("value", [b"0", b"-1", b"never", b""])
def test_rfc9111_5_3_invalid_expires_means_already_expired(value: bytes) -> None:
    assert lifetime((b"date", DATE), (b"expires", value)) == 0


def test_rfc9111_4_2_1_conflicting_expires_lines_mean_stale() -> None:
    first = (b"expires", format_http_date(T0 + 300))
    second = (b"expires", format_http_date(T0 + 600))
    assert lifetime((b"date", DATE), first, second) == 0
    assert lifetime((b"date", DATE), first, first) == 300


def test_rfc9111_4_2_2_no_explicit_freshness_is_none_no_heuristics() -> None:
    assert lifetime((b"last-modified", format_http_date(T0 - 86400))) is None
    assert lifetime((b"cache-control", b"public")) is None


def test_rfc9111_4_2_1_invalid_date_falls_back_to_response_time() -> None:
    headers = (b"date", b"garbage"), (b"expires", format_http_date(T0 + 60))
    assert lifetime(*headers, response_time=T0) == 60


# --- age (RFC 9111 §4.2.3) ------------------------------------------------------------------


def test_rfc9111_4_2_3_apparent_age_from_date() -> None:
    # The response was generated 30 s before it arrived, with no Age header.
    assert corrected_initial_age([(b"date", DATE)], T0 + 29, T0 + 30) == 30


def test_rfc9111_4_2_3_age_header_plus_response_delay() -> None:
    # Upstream cache says 100 s; the round trip took 2 s; Date says 0 s.
    headers = [(b"date", format_http_date(T0 + 2)), (b"age", b"100")]
    assert corrected_initial_age(headers, T0, T0 + 2) == 102


def test_rfc9111_4_2_3_the_larger_of_apparent_and_corrected_age_wins() -> None:
    headers = [(b"date", DATE), (b"age", b"5")]
    assert corrected_initial_age(headers, T0 + 99, T0 + 100) == 100


def test_rfc9111_4_2_3_clock_skew_never_gives_negative_age() -> None:
    future = [(b"date", format_http_date(T0 + 3600))]
    assert corrected_initial_age(future, T0, T0) == 0


@pytest.mark.parametrize("age", [b"abc", b"-5", b"1.5", b""])
def test_rfc9111_5_1_invalid_age_header_is_ignored(age: bytes) -> None:
    assert corrected_initial_age([(b"date", DATE), (b"age", age)], T0, T0) == 0


def test_rfc9111_1_2_2_huge_age_is_capped() -> None:
    assert corrected_initial_age([(b"age", b"9" * 40)], T0, T0) == MAX_DELTA


def test_rfc9111_4_2_3_current_age_adds_resident_time() -> None:
    entry = make_stored_response(
        200, [(b"date", DATE), (b"age", b"10"), (b"cache-control", b"max-age=60")], b"x", [], T0, T0
    )
    assert entry.corrected_initial_age == 10
    assert current_age(entry, T0) == 10
    assert current_age(entry, T0 + 25) == 35
    assert current_age(entry, T0 - 5) == 10  # a clock going backwards never lowers the age


# --- what is kept of a response (RFC 9111 §3.1) ---------------------------------------------


def test_rfc9110_6_6_1_missing_date_is_added_when_stored() -> None:
    entry = make_stored_response(200, [(b"cache-control", b"max-age=60")], b"x", [], T0, T0 + 0.7)
    assert (b"date", format_http_date(T0 + 0.7)) in entry.headers
    # The entry's date is the Date sent, so an If-Modified-Since copied from it matches.
    assert entry.date == float(int(T0 + 0.7))
    # The added Date is rounded to the second; the age must not be.
    assert entry.corrected_initial_age == pytest.approx(0.7)


def test_rfc9111_3_1_hop_by_hop_and_connection_listed_fields_are_not_stored() -> None:
    headers = [
        (b"Connection", b"close, x-private-hop"),
        (b"x-private-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"999"),
        (b"age", b"3"),
        (b"x-cache", b"HIT"),
        (b"Cache-Control", b"max-age=60"),
        (b"date", DATE),
    ]
    entry = make_stored_response(200, headers, b"hello", [], T0, T0)
    names = [name for name, _ in entry.headers]
    assert names == [b"cache-control", b"date", b"content-length"]
    assert (b"content-length", b"5") in entry.headers
    assert entry.corrected_initial_age == 3


def test_204_is_stored_without_content_length() -> None:
    entry = make_stored_response(204, [(b"cache-control", b"max-age=6")], b"", [], T0, T0)
    assert all(name != b"content-length" for name, _ in entry.headers)


def test_entry_size_counts_body_headers_and_overhead() -> None:
    small = make_stored_response(200, [(b"cache-control", b"max-age=6")], b"", [], T0, T0)
    large = make_stored_response(200, [(b"cache-control", b"max-age=6")], b"x" * 1000, [], T0, T0)
    assert large.size - small.size == 1000 + len(b"1000") - len(b"0")
    assert small.size > sum(len(n) + len(v) for n, v in small.headers)
