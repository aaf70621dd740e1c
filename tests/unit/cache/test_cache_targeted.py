"""Targeted cache-control fields (RFC 9213): CDN-Cache-Control and a configurable target list."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.conditional import freshen
from gateway.cache.decisions import Action, lookup_decision
from gateway.cache.fields import format_http_date
from gateway.cache.policy import CachePolicy
from gateway.cache.storing import make_stored_response, why_not_storable
from gateway.cache.targeted import (
    effective_cache_control,
    parse_dictionary,
    targeted_cache_control,
)
from gateway.config import CacheSettings

T0 = 1_700_000_000.0
DATE = (b"date", format_http_date(T0))
CDN = b"cdn-cache-control"
Pairs = list[tuple[bytes, bytes]]


def reason(headers: Pairs, policy: CachePolicy | None = None) -> str | None:
    if policy is None:
        return why_not_storable("GET", 200, [], headers, response_time=T0)
    return why_not_storable("GET", 200, [], headers, response_time=T0, policy=policy)


# --- RFC 8941 §4.2.2 Dictionary parsing (RFC 9213 §2.2) -------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([b"max-age=60"], {"max-age": 60}),
        ([b"no-store"], {"no-store": True}),
        ([b"max-age=60, must-revalidate"], {"max-age": 60, "must-revalidate": True}),
        ([b"max-age=60", b"private"], {"max-age": 60, "private": True}),  # lines joined
        ([b'no-cache="set-cookie"'], {"no-cache": "set-cookie"}),
        ([b"max-age=1.5"], {"max-age": 1.5}),
        ([b"none"], {"none": True}),  # RFC 9213 §3.1's example of a non-empty no-op value
        ([b"max-age=60;foo=bar"], {"max-age": 60}),  # parameters are ignored
        ([b"no-store=?0"], {"no-store": False}),
        ([b"  max-age=5  "], {"max-age": 5}),
    ],
)
def test_rfc8941_dictionary(lines: list[bytes], expected: dict[str, object]) -> None:
    assert parse_dictionary(lines) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"Max-Age=60",  # keys are lowercase in Structured Fields
        b"max-age=60,",  # trailing comma
        b"max-age=",  # no value
        b'no-cache="unterminated',
        b"max-age=60 private",  # no comma between members
        b"max-age=1234567890123456",  # an Integer has at most 15 digits
        b"max-age=\xff",
        b"=60",
    ],
)
def test_rfc9213_2_2_a_field_that_fails_to_parse_is_ignored(line: bytes) -> None:
    assert parse_dictionary([line]) is None
    # ... and the cache falls back to Cache-Control.
    headers = [DATE, (b"cache-control", b"max-age=7"), (CDN, line)]
    cc, targeted = effective_cache_control(headers, (CDN,))
    assert (cc.max_age, targeted) == (7, False)


@given(st.binary(max_size=80))
def test_dictionary_parsing_never_raises(value: bytes) -> None:
    parse_dictionary([value])


# --- precedence (RFC 9213 §2.1) -------------------------------------------------------------


def test_rfc9213_2_1_the_targeted_field_overrides_cache_control() -> None:
    headers = [DATE, (b"cache-control", b"no-store"), (CDN, b"max-age=600")]
    assert reason(headers) is None
    entry = make_stored_response(200, headers, b"x", [], T0, T0)
    assert entry.freshness_lifetime == 600


def test_rfc9213_2_1_no_store_in_the_targeted_field_wins_over_cache_control() -> None:
    headers = [DATE, (b"cache-control", b"public, max-age=600"), (CDN, b"no-store")]
    assert reason(headers) == "no-store"


def test_rfc9213_2_1_expires_is_ignored_when_a_targeted_field_decides() -> None:
    expires = (b"expires", format_http_date(T0 + 3600))
    headers = [DATE, expires, (CDN, b"must-revalidate")]
    # The targeted field gives no freshness, and Expires must not lend it any.
    assert reason(headers) == "no-explicit-freshness"
    assert reason([DATE, expires]) is None


def test_rfc9213_3_1_a_non_empty_no_op_value_disables_cache_control() -> None:
    # "Cache-Control: no-store" + "CDN-Cache-Control: none": only CDN caches may store it.
    headers = [DATE, (b"cache-control", b"no-store"), (CDN, b"none")]
    assert reason(headers) == "no-explicit-freshness"  # not no-store: it is ignored here


def test_rfc9213_2_1_the_first_listed_field_with_a_usable_value_wins() -> None:
    policy = CachePolicy(targeted_fields=(b"gateway-cache-control", CDN))
    headers = [DATE, (CDN, b"max-age=10"), (b"gateway-cache-control", b"max-age=99")]
    cc = targeted_cache_control(headers, policy.targeted_fields)
    assert cc is not None and cc.max_age == 99
    empty = [DATE, (CDN, b"max-age=10"), (b"gateway-cache-control", b"")]
    cc = targeted_cache_control(empty, policy.targeted_fields)
    assert cc is not None and cc.max_age == 10


def test_rfc9213_2_1_fields_not_on_the_target_list_change_nothing_and_pass_through() -> None:
    policy = CachePolicy(targeted_fields=(b"gateway-cache-control",))
    headers = [DATE, (b"cache-control", b"max-age=5"), (CDN, b"max-age=600")]
    entry = make_stored_response(200, headers, b"x", [], T0, T0, policy=policy)
    assert entry.freshness_lifetime == 5
    assert (CDN, b"max-age=600") in entry.headers


def test_an_empty_target_list_turns_targeted_fields_off() -> None:
    policy = CachePolicy(targeted_fields=())
    headers = [DATE, (b"cache-control", b"max-age=5"), (CDN, b"no-store")]
    assert reason(headers, policy) is None


@pytest.mark.parametrize(
    ("value", "lifetime", "invalid"),
    [
        (b"max-age=1.5", 0.0, True),  # a Decimal is not delta-seconds: not consumed (§2.2)
        (b'max-age="60"', 0.0, True),  # nor is a String
        (b"s-maxage=30, max-age=60", 30.0, False),
    ],
)
def test_rfc9213_2_2_values_must_have_the_inferred_type(
    value: bytes, lifetime: float, invalid: bool
) -> None:
    cc = targeted_cache_control([(CDN, value)], (CDN,))
    assert cc is not None and bool(cc.invalid) is invalid
    entry = make_stored_response(200, [DATE, (CDN, value)], b"x", [], T0, T0)
    assert entry.freshness_lifetime == lifetime


# --- not forwarded downstream, kept for revalidation ----------------------------------------


def test_our_targeted_field_is_not_stored_with_the_headers_sent() -> None:
    headers = [DATE, (b"Cache-Control", b"max-age=5"), (b"CDN-Cache-Control", b"max-age=600")]
    entry = make_stored_response(200, headers, b"x", [], T0, T0)
    assert all(name != CDN for name, _ in entry.headers)
    assert entry.targeted == [(CDN, b"max-age=600")]
    assert (b"cache-control", b"max-age=5") in entry.headers  # for the caches downstream


def test_rfc9213_a_304_is_judged_by_the_targeted_field_kept_aside() -> None:
    headers = [DATE, (b"etag", b'"a"'), (b"cache-control", b"max-age=5"), (CDN, b"max-age=600")]
    entry = make_stored_response(200, headers, b"x", [], T0, T0)
    later = T0 + 1000
    fresh = freshen(entry, [(b"etag", b'"a"'), (b"date", format_http_date(later))], later, later)
    assert fresh is not None and fresh.freshness_lifetime == 600
    # A targeted field in the 304 replaces the one kept aside.
    renewed = freshen(entry, [(b"etag", b'"a"'), (CDN, b"max-age=9")], later, later)
    assert renewed is not None and renewed.freshness_lifetime == 9
    assert all(name != CDN for name, _ in renewed.headers)


def test_a_hit_is_fresh_by_the_targeted_field() -> None:
    headers = [DATE, (b"cache-control", b"max-age=0"), (CDN, b"max-age=600")]
    entry = make_stored_response(200, headers, b"x", [], T0, T0)
    decision = lookup_decision(entry, "GET", [], T0 + 100)
    assert decision.action is Action.HIT


def test_policy_from_the_cache_settings() -> None:
    settings = CacheSettings(
        targeted_fields=("Gateway-Cache-Control", "CDN-Cache-Control"),
        heuristic_fraction=0.2,
        heuristic_max_seconds=60.0,
    )
    policy = CachePolicy.from_settings(settings)
    assert policy.targeted_fields == (b"gateway-cache-control", CDN)
    assert (policy.heuristic_fraction, policy.heuristic_max_seconds) == (0.2, 60.0)
    assert CachePolicy.from_settings(CacheSettings()).targeted_fields == (CDN,)
