"""What a shared cache may store (RFC 9111 §3, §3.5, §4.2.1) and what bypasses it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.decisions import bypass_reason, request_bypasses_cache
from gateway.cache.storing import CACHEABLE_STATUSES, is_storable, why_not_storable

Pairs = list[tuple[bytes, bytes]]
ETAG = (b"etag", b'"v1"')


def reason(
    response: Pairs, request: Pairs | None = None, *, method: str = "GET", status: int = 200
) -> str | None:
    return why_not_storable(method, status, request or [], response)


def control(value: bytes, *extra: tuple[bytes, bytes]) -> Pairs:
    return [(b"cache-control", value), *extra]


def test_rfc9111_3_fresh_get_200_is_storable() -> None:
    assert reason(control(b"max-age=60")) is None
    assert is_storable("GET", 200, [], control(b"max-age=60"))


def test_rfc9111_3_only_get_responses_are_stored() -> None:
    # A HEAD is answered from a stored GET; a HEAD response itself is not stored.
    assert reason(control(b"max-age=60"), method="HEAD") == "method"
    assert reason(control(b"max-age=60"), method="POST") == "method"


@pytest.mark.parametrize("status", sorted(CACHEABLE_STATUSES))
def test_rfc9110_15_1_heuristically_cacheable_statuses_with_explicit_freshness(status: int) -> None:
    assert reason(control(b"max-age=60"), status=status) is None


@pytest.mark.parametrize(
    "status", [201, 202, 302, 303, 307, 400, 401, 403, 500, 502, 503, 504, 299, 418, 599]
)
@pytest.mark.parametrize(
    "explicit",
    [
        control(b"max-age=60"),
        control(b"s-maxage=60"),
        [(b"expires", b"Sun, 06 Nov 2094 08:49:37 GMT")],
    ],
)
def test_rfc9111_3_any_final_status_with_explicit_freshness_is_stored(
    status: int, explicit: Pairs
) -> None:
    # §3: "the response contains ... an Expires header field; a max-age response directive;
    # ... an s-maxage response directive", whatever its (final) status, known or not.
    assert reason(explicit, status=status) is None


@pytest.mark.parametrize("status", [302, 303, 307, 400, 500, 503, 299])
def test_rfc9111_3_public_makes_any_status_storable_with_heuristics(status: int) -> None:
    lm = (b"last-modified", b"Sun, 06 Nov 1994 08:49:37 GMT")
    date = (b"date", b"Sun, 06 Nov 2004 08:49:37 GMT")
    assert reason(control(b"public", lm, date), status=status) is None
    # Without public, explicit freshness or a heuristically cacheable status: not stored.
    assert reason([lm, date], status=status) == "status"
    assert reason(control(b"no-cache", ETAG), status=status) == "status"


@pytest.mark.parametrize("status", [100, 103, 101, 206, 304, 600, 99])
def test_rfc9111_3_interim_partial_and_not_modified_are_never_stored(status: int) -> None:
    # §3: a final status; 206 and 304 are only ever combined with a stored response.
    assert reason(control(b"public, max-age=60"), status=status) == "status"


# RFC 9111 §5.2.2.3 must-understand: stored only if the status is understood, and then
# the no-store that accompanies it is ignored.
@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, None), (404, None), (302, None), (503, None), (299, "must-understand")],
)
def test_rfc9111_5_2_2_3_must_understand(status: int, expected: str | None) -> None:
    response = control(b"must-understand, no-store, max-age=60")
    assert reason(response, status=status) == expected
    # Without must-understand, no-store wins as usual.
    assert reason(control(b"no-store, max-age=60"), status=status) == "no-store"


def test_rfc9111_5_2_2_3_must_understand_does_not_lift_private() -> None:
    response = control(b"must-understand, no-store, private, max-age=60")
    assert reason(response) == "private"


@pytest.mark.parametrize(
    ("response", "request_", "expected"),
    [
        (control(b"no-store, max-age=60"), [], "no-store"),
        (control(b"max-age=60"), [(b"cache-control", b"no-store")], "request-no-store"),
        (control(b"private, max-age=60"), [], "private"),
        (control(b"max-age=60", (b"set-cookie", b"sid=1")), [], "set-cookie"),
        (control(b"public, max-age=60", (b"set-cookie", b"sid=1")), [], "set-cookie"),
        (control(b"max-age=60", (b"vary", b"*")), [], "vary-star"),
        (control(b"max-age=60", (b"vary", b"accept, *")), [], "vary-star"),
        (control(b"public"), [], "no-explicit-freshness"),
        ([ETAG], [], "no-explicit-freshness"),
        (control(b"max-age=abc", ETAG), [], "invalid-freshness"),
        (control(b"max-age=60, max-age=120", ETAG), [], "invalid-freshness"),
        (control(b"s-maxage=x, max-age=60", ETAG), [], "invalid-freshness"),
        (control(b"max-age=0"), [], "stale-without-validator"),
        (control(b"no-cache"), [], "stale-without-validator"),
        (control(b"no-cache, max-age=60"), [], "stale-without-validator"),
        (control(b"max-age=0, stale-if-error=60, must-revalidate"), [], "stale-without-validator"),
    ],
)
def test_rfc9111_3_never_stored(response: Pairs, request_: Pairs, expected: str) -> None:
    assert reason(response, request_) == expected


@pytest.mark.parametrize(
    "response",
    [
        control(b"maxage=x, max-age=60"),  # an unknown directive is ignored
        control(b"s-maxage=60, max-age=abc"),  # the invalid directive is not the one in effect
        control(b"max-age=0", ETAG),  # stale at once, but it can be revalidated
        control(b"no-cache", ETAG),  # §5.2.2.4: stored, always revalidated
        control(b"no-cache", (b"last-modified", b"Sun, 06 Nov 1994 08:49:37 GMT")),
        control(b"max-age=1, stale-while-revalidate=59"),  # useful without a validator
        control(b"max-age=0, stale-if-error=600"),
        [(b"expires", b"0"), ETAG],  # §5.3: already expired, revalidatable
    ],
)
def test_rfc9111_3_stored_when_the_entry_can_be_used(response: Pairs) -> None:
    assert reason(response) is None


def test_rfc9111_4_2_1_expires_is_judged_against_response_time_without_date() -> None:
    expires = [(b"expires", b"Sun, 06 Nov 1994 08:49:37 GMT")]
    assert why_not_storable("GET", 200, [], expires, response_time=784111777.0 - 60) is None
    assert (
        why_not_storable("GET", 200, [], expires, response_time=784111777.0 + 60)
        == "stale-without-validator"
    )


# RFC 9111 §3.5: a request with Authorization is stored only if the response says one of
# public, s-maxage or must-revalidate.
AUTH = [(b"authorization", b"Bearer abc")]


@pytest.mark.parametrize(
    ("cache_control", "storable"),
    [
        (b"max-age=60", False),
        (b"no-cache, max-age=60", False),
        (b"proxy-revalidate, max-age=60", False),
        (b"public, max-age=60", True),
        (b"s-maxage=60", True),
        (b"must-revalidate, max-age=60", True),
        (b"private, public, max-age=60", False),  # the most restrictive directive wins
        (b"public, no-store, max-age=60", False),
    ],
)
def test_rfc9111_3_5_authorization_table(cache_control: bytes, storable: bool) -> None:
    assert is_storable("GET", 200, AUTH, control(cache_control, ETAG)) is storable
    assert is_storable("GET", 200, [], control(cache_control, ETAG)) is (
        b"private" not in cache_control and b"no-store" not in cache_control
    )


def test_rfc9110_9_3_3_a_post_response_is_not_stored_even_with_content_location() -> None:
    # §9.3.3 allows reusing it for a later GET; declined (docs/cache.md): a POST's answer is
    # the outcome of one client's request, and no mainstream shared cache stores it, so
    # origins do not mark such answers private.
    response = control(b"public, max-age=60", (b"content-location", b"/items"))
    assert reason(response, method="POST") == "method"


def test_set_cookie_is_not_stored_even_when_public() -> None:
    # The decision written down in docs/cache.md: a cookie is never replayed to another
    # client, and a response is not stored without it unless the origin says so.
    response = control(b"public, s-maxage=600", (b"set-cookie", b"a=b; HttpOnly"))
    assert reason(response) == "set-cookie"


@pytest.mark.parametrize(
    "directives",
    [b'public, max-age=60, no-cache="Set-Cookie"', b'max-age=60, private="set-cookie"'],
)
def test_rfc9111_5_2_2_4_and_5_2_2_7_set_cookie_listed_as_unshared_is_stored(
    directives: bytes,
) -> None:
    response = control(directives, (b"set-cookie", b"a=b"))
    assert reason(response) is None


@pytest.mark.parametrize(
    "directives", [b'private="x-user", max-age=60', b'no-cache="x-user", max-age=60']
)
def test_rfc9111_5_2_2_7_qualified_private_stores_the_rest(directives: bytes) -> None:
    assert reason(control(directives, (b"x-user", b"alice"))) is None


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [b"cache-control", b"expires", b"date", b"vary", b"etag", b"age", b"x"]
            ),
            st.binary(max_size=40),
        ),
        max_size=6,
    ),
    st.integers(100, 599),
)
def test_storability_never_raises(headers: Pairs, status: int) -> None:
    why_not_storable("GET", status, headers, headers)


# --- requests the cache stays out of --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "request_", "expected"),
    [
        ("GET", [], None),
        ("HEAD", [], None),
        ("POST", [], "method"),
        ("DELETE", [], "method"),
        ("GET", [(b"cache-control", b"no-store")], "no-store"),
        ("GET", [(b"pragma", b"no-cache")], None),
        # Range is answered from a complete stored response (gateway.cache.ranges).
        ("GET", [(b"range", b"bytes=0-10")], None),
        ("GET", [(b"if-range", b'"v1"')], None),
        ("GET", [(b"if-match", b'"v1"')], "precondition"),
        ("GET", [(b"if-unmodified-since", b"Sun, 06 Nov 1994 08:49:37 GMT")], "precondition"),
        ("GET", [(b"if-none-match", b'"v1"')], None),
        ("GET", [(b"authorization", b"Bearer x")], None),
    ],
)
def test_bypass(method: str, request_: Pairs, expected: str | None) -> None:
    assert bypass_reason(method, request_) == expected
    assert request_bypasses_cache(method, request_) is (expected is not None)


def test_an_unparsable_last_modified_is_no_validator() -> None:
    response = control(b"max-age=0", (b"last-modified", b"yesterday"))
    assert reason(response) == "stale-without-validator"
