"""Serving from the cache: RFC 9111 §4 (freshness, §5.2.1 request directives, §4.2.4 stale),
RFC 5861 (stale-while-revalidate, stale-if-error) and RFC 9211 Cache-Status."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.decisions import (
    Action,
    Decision,
    answer_stale_on_error,
    can_serve_stale_on_error,
    forwarded_cache_headers,
    lookup_decision,
)
from gateway.cache.fields import format_http_date
from gateway.cache.storing import StoredResponse, is_storable, make_stored_response

Pairs = list[tuple[bytes, bytes]]
T0 = 1_700_000_000.0
DATE = (b"date", format_http_date(T0))
ETAG = (b"etag", b'"v1"')
ANSWERED = {
    Action.HIT,
    Action.NOT_MODIFIED,
    Action.STALE_WHILE_REVALIDATE,
    Action.ONLY_IF_CACHED_MISS,
}


def stored(
    cache_control: bytes, *extra: tuple[bytes, bytes], body: bytes = b"hello"
) -> StoredResponse:
    headers = [DATE, (b"cache-control", cache_control), *extra]
    return make_stored_response(200, headers, body, [], T0, T0)


def header(headers: Pairs, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


SWR = "max-age=60, stale-while-revalidate=30"


def case(
    name: str, request: str, response: str, *, etag: bool = False, age: float = 0, expect: str
) -> object:
    """One row: request and response Cache-Control, whether the response has a validator,
    the entry's age when the request comes, and the outcome as "ACTION" or "ACTION fwd",
    or "not stored" (then nothing is looked up)."""
    return pytest.param(request, response, etag, age, expect, id=name)


# Cache-Control combinations, request x response (RFC 9111 §3, §4.2, §5.2; RFC 5861).
TABLE = [
    case("fresh §4.2", "", "max-age=60", age=10, expect="HIT"),
    case("age = lifetime is stale §4.2", "", "max-age=60", age=60, expect="MISS stale"),
    case("stale, validator §4.3.1", "", "max-age=60", etag=True, age=70, expect="REVALIDATE stale"),
    case("req no-cache §5.2.1.4", "no-cache", "max-age=60", etag=True, age=10,
         expect="REVALIDATE request"),
    case("req no-cache, no validator", "no-cache", "max-age=60", age=10, expect="MISS request"),
    case("req max-age=0 §5.2.1.1", "max-age=0", "max-age=60", etag=True, age=10,
         expect="REVALIDATE request"),
    case("req max-age too young", "max-age=5", "max-age=60", etag=True, age=10,
         expect="REVALIDATE request"),
    case("req max-age satisfied", "max-age=20", "max-age=60", age=10, expect="HIT"),
    case("req max-age invalid = 0", "max-age=x", "max-age=60", etag=True, age=10,
         expect="REVALIDATE request"),
    case("req min-fresh unmet §5.2.1.3", "min-fresh=55", "max-age=60", etag=True, age=10,
         expect="REVALIDATE request"),
    case("req min-fresh met", "min-fresh=30", "max-age=60", age=10, expect="HIT"),
    case("req bare max-stale §5.2.1.2", "max-stale", "max-age=60", age=1000, expect="HIT"),
    case("req max-stale too small", "max-stale=5", "max-age=60", etag=True, age=70,
         expect="REVALIDATE stale"),
    case("req max-stale within", "max-stale=30", "max-age=60", age=70, expect="HIT"),
    case("max-stale vs must-revalidate §5.2.2.2", "max-stale=30", "max-age=60, must-revalidate",
         etag=True, age=70, expect="REVALIDATE stale"),
    case("max-stale vs proxy-revalidate §5.2.2.8", "max-stale=30", "max-age=60, proxy-revalidate",
         etag=True, age=70, expect="REVALIDATE stale"),
    case("max-stale vs s-maxage §5.2.2.10", "max-stale=30", "s-maxage=60", etag=True, age=70,
         expect="REVALIDATE stale"),
    case("swr window RFC 5861 §3", "", SWR, age=80, expect="STALE_WHILE_REVALIDATE"),
    case("swr window edge", "", SWR, age=90, expect="STALE_WHILE_REVALIDATE"),
    case("swr window passed", "", SWR, age=91, expect="MISS stale"),
    case("swr vs must-revalidate", "", SWR + ", must-revalidate", etag=True, age=80,
         expect="REVALIDATE stale"),
    case("swr vs req no-cache", "no-cache", SWR, etag=True, age=80, expect="REVALIDATE stale"),
    case("swr vs req min-fresh", "min-fresh=1", SWR, etag=True, age=80,
         expect="REVALIDATE stale"),
    case("swr granted with s-maxage", "", "s-maxage=60, stale-while-revalidate=30", age=80,
         expect="STALE_WHILE_REVALIDATE"),
    case("resp no-cache §5.2.2.4", "", "no-cache", etag=True, expect="REVALIDATE stale"),
    case("resp no-cache beats max-age", "", "no-cache, max-age=60", etag=True, age=10,
         expect="REVALIDATE stale"),
    case("resp no-cache forbids swr", "", "no-cache, stale-while-revalidate=60", etag=True,
         age=10, expect="REVALIDATE stale"),
    case("s-maxage wins over max-age=0", "", "s-maxage=60, max-age=0", age=10, expect="HIT"),
    case("s-maxage=0 wins over max-age", "", "s-maxage=0, max-age=60", etag=True, age=10,
         expect="REVALIDATE stale"),
    case("max-age=0 with validator", "", "max-age=0", etag=True, expect="REVALIDATE stale"),
    case("only-if-cached stale §5.2.1.7", "only-if-cached", "max-age=60", age=70,
         expect="ONLY_IF_CACHED_MISS"),
    case("only-if-cached fresh", "only-if-cached", "max-age=60", age=10, expect="HIT"),
    case("only-if-cached + max-stale", "only-if-cached, max-stale", "max-age=60", age=70,
         expect="HIT"),
    case("identical duplicates", "", "max-age=60, max-age=60", age=10, expect="HIT"),
    case("req no-store bypasses §5.2.1.5", "no-store", "max-age=60", age=10,
         expect="BYPASS bypass"),
    case("resp no-store §5.2.2.5", "", "no-store, max-age=60", etag=True, expect="not stored"),
    case("resp private §5.2.2.7", "", "private, max-age=60", etag=True, expect="not stored"),
    case("no explicit freshness §4.2.2", "", "public", etag=True, expect="not stored"),
    case("invalid max-age §4.2.1", "", "max-age=abc", etag=True, expect="not stored"),
    case("conflicting max-age §4.2.1", "", "max-age=60, max-age=120", etag=True,
         expect="not stored"),
]  # fmt: skip


@pytest.mark.parametrize(("request_cc", "response_cc", "etag", "age", "expect"), TABLE)
def test_cache_control_combinations(
    request_cc: str, response_cc: str, etag: bool, age: float, expect: str
) -> None:
    request_headers = [(b"cache-control", request_cc.encode())] if request_cc else []
    response_headers = [DATE, (b"cache-control", response_cc.encode()), *([ETAG] if etag else [])]
    storable = is_storable("GET", 200, request_headers, response_headers)
    # A no-store request is bypassed (the response is not stored), yet the entry is looked at.
    assert storable is (expect not in ("not stored", "BYPASS bypass"))
    if expect == "not stored":
        return
    action, _, fwd = expect.partition(" ")
    entry = make_stored_response(200, response_headers, b"hello", [], T0, T0)
    decision = lookup_decision(entry, "GET", request_headers, T0 + age)
    assert (decision.action, decision.fwd) == (Action[action], fwd or None)
    assert (decision.answer is not None) is (decision.action in ANSWERED)
    if decision.action is not Action.BYPASS:
        assert decision.entry is entry  # kept for revalidation and stale-if-error


def test_rfc9111_5_4_pragma_no_cache_without_cache_control_revalidates() -> None:
    entry = stored(b"max-age=60", ETAG)
    pragma = [(b"pragma", b"no-cache")]
    assert lookup_decision(entry, "GET", pragma, T0 + 1).action is Action.REVALIDATE
    both = [*pragma, (b"cache-control", b"max-stale")]
    assert lookup_decision(entry, "GET", both, T0 + 1).action is Action.HIT


def test_rfc9111_4_2_3_upstream_age_counts_towards_staleness() -> None:
    # An upstream cache held it for 50 of its 60 seconds already.
    entry = stored(b"max-age=60", (b"age", b"50"))
    assert lookup_decision(entry, "GET", [], T0 + 5).action is Action.HIT
    assert lookup_decision(entry, "GET", [], T0 + 11).action is Action.MISS


def test_miss_without_entry_and_only_if_cached_504() -> None:
    assert lookup_decision(None, "GET", [], T0) == Decision(Action.MISS, fwd="uri-miss")
    vary_miss = lookup_decision(None, "GET", [], T0, miss="vary-miss")
    assert vary_miss.fwd == "vary-miss"
    decision = lookup_decision(None, "GET", [(b"cache-control", b"only-if-cached")], T0)
    assert decision.action is Action.ONLY_IF_CACHED_MISS
    assert decision.answer is not None
    assert decision.answer.status == 504 and decision.answer.body == b""
    assert header(decision.answer.headers, b"cache-status") == [b"gateway; detail=only-if-cached"]
    assert header(decision.answer.headers, b"content-length") == [b"0"]


def test_bypass_decisions_name_the_reason() -> None:
    post = lookup_decision(stored(b"max-age=60"), "POST", [], T0)
    assert (post.action, post.fwd, post.detail, post.entry) == (
        Action.BYPASS,
        "method",
        "method",
        None,
    )
    # A Range that the stored response cannot answer as it is goes upstream untouched.
    ranged = lookup_decision(stored(b"max-age=1", ETAG), "GET", [(b"range", b"bytes=0-1")], T0 + 5)
    assert (ranged.action, ranged.fwd, ranged.detail) == (Action.BYPASS, "bypass", "range")
    missed = lookup_decision(None, "GET", [(b"range", b"bytes=0-1")], T0)
    assert (missed.action, missed.detail) == (Action.BYPASS, "range")


# --- the answers (RFC 9111 §4, §5.1 Age; RFC 9211 Cache-Status) ---------------------------


def test_fresh_hit_headers_age_cache_status_x_cache() -> None:
    entry = stored(b"max-age=60", (b"content-type", b"text/plain"), (b"age", b"3"))
    decision = lookup_decision(entry, "GET", [], T0 + 10.9)
    assert decision.action is Action.HIT and decision.answer is not None
    answer = decision.answer
    assert (answer.status, answer.body) == (200, b"hello")
    assert header(answer.headers, b"age") == [b"13"]
    assert header(answer.headers, b"cache-status") == [b"gateway; hit; ttl=46"]
    assert header(answer.headers, b"x-cache") == [b"HIT"]
    assert header(answer.headers, b"content-type") == [b"text/plain"]
    assert header(answer.headers, b"content-length") == [b"5"]
    assert decision.age == pytest.approx(13.9)


def test_rfc9211_2_upstream_cache_status_is_kept_before_ours() -> None:
    entry = stored(b"max-age=60", (b"cache-status", b"origin-cdn; fwd=uri-miss"))
    decision = lookup_decision(entry, "GET", [], T0)
    assert decision.answer is not None
    assert header(decision.answer.headers, b"cache-status") == [
        b"origin-cdn; fwd=uri-miss",
        b"gateway; hit; ttl=60",
    ]


def test_head_is_answered_from_a_stored_get_without_body() -> None:
    decision = lookup_decision(stored(b"max-age=60"), "HEAD", [], T0)
    assert decision.answer is not None
    assert decision.answer.body == b""
    assert header(decision.answer.headers, b"content-length") == [b"5"]


def test_rfc9111_4_2_4_max_stale_hit_is_marked_stale() -> None:
    decision = lookup_decision(
        stored(b"max-age=60"), "GET", [(b"cache-control", b"max-stale")], T0 + 75
    )
    assert decision.action is Action.HIT and decision.answer is not None
    assert header(decision.answer.headers, b"x-cache") == [b"STALE"]
    assert header(decision.answer.headers, b"cache-status") == [
        b"gateway; hit; ttl=-15; detail=max-stale"
    ]


def test_rfc5861_3_stale_while_revalidate_answer() -> None:
    entry = stored(b"max-age=60, stale-while-revalidate=30")
    decision = lookup_decision(entry, "GET", [], T0 + 80)
    assert decision.action is Action.STALE_WHILE_REVALIDATE and decision.answer is not None
    assert decision.answer.body == b"hello"
    assert header(decision.answer.headers, b"x-cache") == [b"STALE"]
    assert header(decision.answer.headers, b"age") == [b"80"]
    assert header(decision.answer.headers, b"cache-status") == [
        b"gateway; hit; ttl=-20; detail=stale-while-revalidate"
    ]


def test_rfc5861_3_stale_while_revalidate_still_answers_client_conditionals() -> None:
    entry = stored(b"max-age=60, stale-while-revalidate=30", ETAG)
    decision = lookup_decision(entry, "GET", [(b"if-none-match", b'"v1"')], T0 + 80)
    assert decision.action is Action.STALE_WHILE_REVALIDATE and decision.answer is not None
    assert decision.answer.status == 304


# --- stale-if-error (RFC 5861 §4) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("response_cc", "request_cc", "age", "allowed"),
    [
        (b"max-age=60, stale-if-error=30", b"", 80, True),
        (b"max-age=60, stale-if-error=30", b"", 90, True),
        (b"max-age=60, stale-if-error=30", b"", 91, False),
        (b"max-age=60, stale-if-error=30", b"", 10, True),  # fresh, forwarded for no-cache
        (b"max-age=60", b"stale-if-error=100", 150, True),  # §4: the request may ask too
        (b"max-age=60", b"stale-if-error=100", 161, False),
        (b"max-age=60, stale-if-error=10", b"stale-if-error=100", 150, True),
        (b"max-age=60", b"", 61, False),
        (b"max-age=60, stale-if-error=30, must-revalidate", b"", 80, False),
        (b"max-age=60, stale-if-error=30, proxy-revalidate", b"", 80, False),
        (b"no-cache, stale-if-error=30", b"stale-if-error=30", 10, False),
        # RFC 9111 §4.2.4, §5.2.2.10: s-maxage implies proxy-revalidate for a shared cache.
        (b"s-maxage=60, stale-if-error=30", b"", 80, False),
    ],
)
def test_rfc5861_4_stale_if_error_window(
    response_cc: bytes, request_cc: bytes, age: float, allowed: bool
) -> None:
    entry = stored(response_cc, ETAG)
    request_headers = [(b"cache-control", request_cc)] if request_cc else []
    assert can_serve_stale_on_error(entry, request_headers, T0 + age) is allowed


def test_rfc5861_4_stale_if_error_answer() -> None:
    entry = stored(b"max-age=60, stale-if-error=300", ETAG)
    decision = lookup_decision(entry, "GET", [], T0 + 80)
    assert decision.action is Action.REVALIDATE
    answer = answer_stale_on_error(decision, "GET", [], T0 + 81, fwd_status=503)
    assert answer is not None
    assert (answer.status, answer.body) == (200, b"hello")
    assert header(answer.headers, b"x-cache") == [b"STALE"]
    assert header(answer.headers, b"cache-status") == [
        b"gateway; fwd=stale; fwd-status=503; ttl=-21; detail=stale-if-error"
    ]
    # No response at all (connection refused): no fwd-status.
    failed = answer_stale_on_error(decision, "GET", [], T0 + 81)
    assert failed is not None
    assert header(failed.headers, b"cache-status")[0].startswith(b"gateway; fwd=stale; ttl=")


def test_rfc5861_4_no_stale_answer_outside_the_window_or_without_entry() -> None:
    entry = stored(b"max-age=60, stale-if-error=10", ETAG)
    decision = lookup_decision(entry, "GET", [], T0 + 80)
    assert answer_stale_on_error(decision, "GET", [], T0 + 80, fwd_status=502) is None
    assert answer_stale_on_error(Decision(Action.MISS, fwd="uri-miss"), "GET", [], T0) is None


# --- headers on forwarded responses (RFC 9211 §2.2-2.4) -------------------------------------


def test_forwarded_cache_headers() -> None:
    miss = Decision(Action.MISS, fwd="uri-miss")
    assert forwarded_cache_headers(miss, 200, stored=True) == [
        (b"cache-status", b"gateway; fwd=uri-miss; fwd-status=200; stored"),
        (b"x-cache", b"MISS"),
    ]
    expired = Decision(Action.REVALIDATE, stored(b"max-age=1", ETAG), fwd="stale")
    assert forwarded_cache_headers(expired, 200) == [
        (b"cache-status", b"gateway; fwd=stale; fwd-status=200"),
        (b"x-cache", b"EXPIRED"),
    ]
    bypass = lookup_decision(None, "POST", [], T0)
    assert forwarded_cache_headers(bypass, 201) == [
        (b"cache-status", b"gateway; fwd=method; fwd-status=201"),
        (b"x-cache", b"BYPASS"),
    ]
    forced = Decision(Action.MISS, stored(b"max-age=60"), fwd="request")
    assert forwarded_cache_headers(forced, None)[1] == (b"x-cache", b"MISS")


_REQUEST_FIELDS = [b"cache-control", b"pragma", b"if-none-match", b"if-modified-since", b"accept"]


@given(
    st.lists(st.tuples(st.sampled_from(_REQUEST_FIELDS), st.binary(max_size=40)), max_size=5),
    st.floats(-100, 10_000),
)
def test_lookup_never_raises_and_answers_exactly_when_it_should(
    request_headers: Pairs, age: float
) -> None:
    entry = stored(b"max-age=60, stale-while-revalidate=30, stale-if-error=60", ETAG)
    decision = lookup_decision(entry, "GET", request_headers, T0 + age)
    assert (decision.answer is not None) is (decision.action in ANSWERED)
    if decision.answer is not None and decision.action is not Action.ONLY_IF_CACHED_MISS:
        assert decision.answer.status in (200, 304)
    answer_stale_on_error(decision, "GET", request_headers, T0 + age, fwd_status=503)
