"""Cache-Control parsing (RFC 9111 §5.2) and HTTP-date parsing (RFC 9110 §5.6.7)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.fields import (
    MAX_DELTA,
    NO_DIRECTIVES,
    CacheControl,
    format_http_date,
    parse_cache_control,
    parse_http_date,
    request_cache_control,
)


def cc(*lines: str) -> CacheControl:
    return parse_cache_control([line.encode("latin-1") for line in lines])


def test_rfc9111_5_2_boolean_and_delta_directives() -> None:
    parsed = cc("public, max-age=60, s-maxage=30, must-revalidate, proxy-revalidate")
    assert parsed.public and parsed.must_revalidate and parsed.proxy_revalidate
    assert (parsed.max_age, parsed.s_maxage) == (60, 30)
    assert not parsed.no_store and not parsed.no_cache and not parsed.private
    assert parsed.invalid == frozenset()


def test_rfc9111_5_2_directive_names_are_case_insensitive() -> None:
    parsed = cc("No-Store, MAX-AGE=5, Stale-While-Revalidate=7")
    assert parsed.no_store and parsed.max_age == 5 and parsed.stale_while_revalidate == 7


def test_rfc9111_5_2_quoted_arguments_are_accepted() -> None:
    assert cc('max-age="60"').max_age == 60


def test_rfc9111_5_2_commas_inside_quoted_strings_do_not_split() -> None:
    parsed = cc('no-cache="set-cookie, x-foo", max-age=10')
    assert parsed.no_cache_fields == {b"set-cookie", b"x-foo"} and parsed.max_age == 10


def test_rfc9111_5_2_2_4_and_5_2_2_7_qualified_forms_list_fields() -> None:
    # The qualified forms limit only the listed fields, not the response (§5.2.2.4, §5.2.2.7).
    no_cache = cc('no-cache="Set-Cookie"')
    assert not no_cache.no_cache and no_cache.no_cache_fields == {b"set-cookie"}
    private = cc('private="X-User, X-Token"')
    assert not private.private and private.private_fields == {b"x-user", b"x-token"}
    assert private.unshared_fields == {b"x-user", b"x-token"}
    assert not no_cache.forbids_stale  # only the unqualified no-cache forbids stale use
    # An unquoted single name is the token form, accepted too.
    assert cc("private=x-user").private_fields == {b"x-user"}


@pytest.mark.parametrize(
    "value",
    [
        'no-cache="set-cookie", no-cache',  # both forms: the unqualified one wins
        "no-cache, no-cache=set-cookie",
        'no-cache=""',  # an empty list names nothing: unqualified
        'no-cache=" , "',
    ],
)
def test_rfc9111_5_2_2_4_unqualified_no_cache_wins(value: str) -> None:
    parsed = cc(value)
    assert parsed.no_cache and not parsed.no_cache_fields


def test_rfc9111_5_2_2_7_repeated_qualified_private_unites_the_lists() -> None:
    parsed = cc('private="a", private="b"')
    assert not parsed.private and parsed.private_fields == {b"a", b"b"}
    assert cc('private, private="a"').private


def test_rfc9111_5_2_1_4_a_qualified_request_no_cache_is_plain_no_cache() -> None:
    parsed = request_cache_control([(b"cache-control", b'no-cache="x"')])
    assert parsed.no_cache and not parsed.no_cache_fields


def test_rfc9111_5_2_2_3_must_understand_is_parsed() -> None:
    assert cc("must-understand, no-store").must_understand
    assert not cc("no-store").must_understand


def test_rfc9111_5_2_several_field_lines_combine() -> None:
    parsed = cc("max-age=60", "no-cache")
    assert parsed.max_age == 60 and parsed.no_cache


def test_rfc9111_5_2_1_request_directives() -> None:
    parsed = cc("max-stale=30, min-fresh=5, only-if-cached, stale-if-error=9")
    assert (parsed.max_stale, parsed.min_fresh, parsed.stale_if_error) == (30, 5, 9)
    assert parsed.only_if_cached


def test_rfc9111_5_2_1_2_bare_max_stale_accepts_any_staleness() -> None:
    assert cc("max-stale").max_stale == MAX_DELTA


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "6 0", "\u00b2"])
def test_rfc9111_4_2_1_invalid_max_age_means_stale(value: str) -> None:
    parsed = cc(f"max-age={value}")
    assert parsed.max_age == 0
    assert "max-age" in parsed.invalid


def test_rfc9111_4_2_1_max_age_without_argument_is_invalid() -> None:
    parsed = cc("max-age")
    assert parsed.max_age == 0 and "max-age" in parsed.invalid


def test_rfc9111_4_2_1_conflicting_duplicates_mean_stale() -> None:
    parsed = cc("max-age=60, max-age=120")
    assert parsed.max_age == 0 and "max-age" in parsed.invalid
    conflicting_lines = cc("s-maxage=1", "s-maxage=2")
    assert conflicting_lines.s_maxage == 0 and "s-maxage" in conflicting_lines.invalid


def test_rfc9111_4_2_1_identical_duplicates_are_harmless() -> None:
    parsed = cc("max-age=60, max-age=60")
    assert parsed.max_age == 60 and parsed.invalid == frozenset()


def test_invalid_or_conflicting_stale_windows_are_ignored() -> None:
    assert cc("stale-while-revalidate=x").stale_while_revalidate is None
    assert cc("stale-if-error=1, stale-if-error=2").stale_if_error is None
    assert cc("max-stale=abc").max_stale is None


def test_rfc9111_1_2_2_huge_delta_seconds_become_2_pow_31() -> None:
    assert cc("max-age=99999999999999999999999").max_age == MAX_DELTA
    assert cc("max-age=" + "9" * 5000).max_age == MAX_DELTA  # past int()'s digit limit


def test_unknown_directives_and_empty_items_are_ignored() -> None:
    assert cc(", ,foo=bar, immutable,,") == NO_DIRECTIVES
    assert cc("") == NO_DIRECTIVES


def test_rfc9111_5_4_pragma_no_cache_only_without_cache_control() -> None:
    assert request_cache_control([(b"pragma", b"no-cache")]).no_cache
    assert request_cache_control([(b"pragma", b"foo, No-Cache")]).no_cache
    with_cc = [(b"pragma", b"no-cache"), (b"cache-control", b"max-age=100")]
    assert not request_cache_control(with_cc).no_cache
    assert request_cache_control([]) == NO_DIRECTIVES


@given(st.lists(st.binary(max_size=200), max_size=4))
def test_parser_never_raises_on_arbitrary_bytes(lines: list[bytes]) -> None:
    parsed = parse_cache_control(lines)
    for value in (parsed.max_age, parsed.s_maxage, parsed.max_stale, parsed.min_fresh):
        assert value is None or 0 <= value <= MAX_DELTA


_DIRECTIVE = st.one_of(
    st.sampled_from(["no-store", "no-cache", "private", "public", "must-revalidate", "max-stale"]),
    st.builds(
        lambda name, value: f"{name}={value}",
        st.sampled_from(["max-age", "s-maxage", "stale-if-error", "min-fresh", "x"]),
        st.one_of(st.integers(-5, 10**12).map(str), st.text(max_size=8)),
    ),
    st.text(max_size=20),
)


@given(st.lists(_DIRECTIVE, max_size=8), st.sampled_from([", ", ",", " , "]))
def test_parser_never_raises_on_directive_like_text(items: list[str], sep: str) -> None:
    parse_cache_control([sep.join(items)])


@given(st.integers(0, MAX_DELTA), st.sampled_from(["max-age", "s-maxage"]))
def test_valid_delta_seconds_round_trip(seconds: int, name: str) -> None:
    parsed = cc(f"public, {name}={seconds}")
    assert getattr(parsed, name.replace("-", "_")) == seconds
    assert parsed.invalid == frozenset()


# --- HTTP-date (RFC 9110 §5.6.7) --------------------------------------------------------------

NOV_6_1994 = 784111777.0


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
        "Sun Nov  6 08:49:37 1994",  # obsolete asctime
        "sun, 06 nov 1994 08:49:37 gmt",
    ],
)
def test_rfc9110_5_6_7_three_date_formats(text: str) -> None:
    assert parse_http_date(text) == NOV_6_1994
    assert parse_http_date(text.encode()) == NOV_6_1994


@pytest.mark.parametrize(
    "text",
    ["0", "-1", "", "tomorrow", "Sun, 31 Feb 1994 08:49:37 GMT", "Sun, 06 Foo 1994 08:49:37 GMT"],
)
def test_rfc9110_5_6_7_invalid_dates_are_none(text: str) -> None:
    assert parse_http_date(text) is None


def test_format_http_date_round_trips() -> None:
    assert format_http_date(NOV_6_1994) == b"Sun, 06 Nov 1994 08:49:37 GMT"


@given(st.one_of(st.binary(max_size=60), st.text(max_size=60)))
def test_date_parser_never_raises(value: bytes | str) -> None:
    parse_http_date(value)


@given(st.integers(0, 2**33))
def test_date_format_and_parse_round_trip(timestamp: int) -> None:
    assert parse_http_date(format_http_date(timestamp)) == timestamp
