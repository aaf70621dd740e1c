"""Heuristic freshness (RFC 9111 §4.2.2) and its marking in Cache-Status (RFC 9211 §2.7, §2.8)."""

from __future__ import annotations

import pytest

from gateway.cache.decisions import Action, lookup_decision
from gateway.cache.fields import format_http_date
from gateway.cache.freshness import heuristic_lifetime
from gateway.cache.policy import CachePolicy
from gateway.cache.storing import make_stored_response, why_not_storable

T0 = 1_700_000_000.0
DAY = 86400.0
DATE = (b"date", format_http_date(T0))
Pairs = list[tuple[bytes, bytes]]


def modified(seconds_ago: float) -> tuple[bytes, bytes]:
    return (b"last-modified", format_http_date(T0 - seconds_ago))


def header(headers: Pairs, name: bytes) -> bytes | None:
    return next((v for n, v in headers if n == name), None)


def test_rfc9111_4_2_2_a_fraction_of_the_last_modified_age() -> None:
    assert heuristic_lifetime([DATE, modified(1000)], T0, 0.1, DAY) == pytest.approx(100)
    assert heuristic_lifetime([DATE, modified(1000)], T0, 0.25, DAY) == pytest.approx(250)


def test_heuristic_freshness_is_capped() -> None:
    assert heuristic_lifetime([DATE, modified(365 * DAY)], T0, 0.1, DAY) == DAY


@pytest.mark.parametrize(
    "headers",
    [
        [DATE],  # no Last-Modified
        [DATE, (b"last-modified", b"yesterday")],  # unparsable
    ],
)
def test_no_heuristic_without_a_usable_last_modified(headers: Pairs) -> None:
    assert heuristic_lifetime(headers, T0, 0.1, DAY) is None


def test_a_fraction_of_zero_turns_heuristics_off() -> None:
    assert heuristic_lifetime([DATE, modified(1000)], T0, 0.0, DAY) is None
    off = CachePolicy(heuristic_fraction=0.0)
    reason = why_not_storable("GET", 200, [], [DATE, modified(1000)], response_time=T0, policy=off)
    assert reason == "no-explicit-freshness"


def test_a_last_modified_after_date_gives_no_freshness() -> None:
    assert heuristic_lifetime([DATE, modified(-500)], T0, 0.1, DAY) == 0.0


def test_without_date_the_response_time_stands_in() -> None:
    assert heuristic_lifetime([modified(1000)], T0, 0.1, DAY) == pytest.approx(100)


@pytest.mark.parametrize("status", [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501])
def test_rfc9110_15_1_heuristically_cacheable_statuses_are_stored_on_heuristics(
    status: int,
) -> None:
    headers = [DATE, modified(1000)]
    assert why_not_storable("GET", status, [], headers, response_time=T0) is None
    entry = make_stored_response(status, headers, b"", [], T0, T0)
    assert entry.heuristic and entry.freshness_lifetime == pytest.approx(100)


@pytest.mark.parametrize("status", [302, 307, 400, 500, 503])
def test_rfc9111_3_other_statuses_get_heuristics_only_when_public(status: int) -> None:
    headers = [DATE, modified(1000)]
    assert why_not_storable("GET", status, [], headers, response_time=T0) == "status"
    public = [*headers, (b"cache-control", b"public")]
    assert why_not_storable("GET", status, [], public, response_time=T0) is None
    assert make_stored_response(status, public, b"", [], T0, T0).heuristic


@pytest.mark.parametrize(
    "explicit",
    [
        (b"cache-control", b"max-age=5"),
        (b"cache-control", b"s-maxage=5"),
        (b"expires", format_http_date(T0 + 5)),
    ],
)
def test_rfc9111_4_2_2_never_heuristics_with_explicit_freshness(
    explicit: tuple[bytes, bytes],
) -> None:
    entry = make_stored_response(200, [DATE, modified(DAY), explicit], b"", [], T0, T0)
    assert not entry.heuristic and entry.freshness_lifetime == 5


def test_no_heuristic_for_no_cache() -> None:
    headers = [DATE, modified(1000), (b"cache-control", b"no-cache")]
    entry = make_stored_response(200, headers, b"", [], T0, T0)
    assert not entry.heuristic and entry.freshness_lifetime == 0


def test_rfc9211_a_heuristic_hit_says_so_in_cache_status() -> None:
    entry = make_stored_response(200, [DATE, modified(1000)], b"x", [], T0, T0)
    decision = lookup_decision(entry, "GET", [], T0 + 10)
    assert decision.action is Action.HIT and decision.answer is not None
    assert header(decision.answer.headers, b"cache-status") == (
        b"gateway; hit; ttl=90; detail=heuristic"
    )
    explicit = make_stored_response(
        200, [DATE, (b"cache-control", b"max-age=100")], b"x", [], T0, T0
    )
    answer = lookup_decision(explicit, "GET", [], T0 + 10).answer
    assert answer is not None
    assert header(answer.headers, b"cache-status") == b"gateway; hit; ttl=90"


def test_rfc9111_4_2_3_an_age_beyond_the_heuristic_lifetime_is_stale_on_arrival() -> None:
    # 10% of 1000 s is 100 s; the upstream says the response is already 500 s old.
    headers = [DATE, modified(1000), (b"age", b"500")]
    entry = make_stored_response(200, headers, b"x", [], T0, T0)
    decision = lookup_decision(entry, "GET", [], T0)
    assert decision.action is Action.REVALIDATE  # Last-Modified is its validator
    assert decision.fwd == "stale"
