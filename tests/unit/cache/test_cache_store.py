"""The store: keys (RFC 9111 §2), Vary (§4.1), LRU by size, invalidation (§4.4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.decisions import Action
from gateway.cache.fields import format_http_date
from gateway.cache.keys import invalidation_keys, primary_key, vary_key, vary_names
from gateway.cache.store import ResponseCache
from gateway.cache.storing import StoredResponse, make_stored_response
from gateway.config import CacheSettings

Pairs = list[tuple[bytes, bytes]]
T0 = 1_700_000_000.0
KEY = "https://example.com/doc"


def stored(
    *extra: tuple[bytes, bytes],
    request: Pairs | None = None,
    body: bytes = b"hello",
    at: float = T0,
) -> StoredResponse:
    headers = [(b"date", format_http_date(at)), (b"cache-control", b"max-age=60"), *extra]
    return make_stored_response(200, headers, body, request or [], at, at)


# --- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "host", "path", "query", "key"),
    [
        ("https", "Example.COM", "/a", "", "https://example.com/a"),
        ("HTTPS", "example.com:443", "/a", "x=1", "https://example.com/a?x=1"),
        ("http", "example.com:80", "/a", "", "http://example.com/a"),
        ("https", "example.com:8443", "/a", "", "https://example.com:8443/a"),
        ("https", "[::1]:443", "/a", "", "https://[::1]/a"),
        ("https", "[::1]:8443", "/a", "", "https://[::1]:8443/a"),
        ("https", b"example.com", b"/a%20b", b"q=%41", "https://example.com/a%20b?q=%41"),
        ("https", "example.com", "", "", "https://example.com/"),
        # The path and query are kept as received: no reordering, no decoding.
        ("https", "example.com", "/A/../b", "b=2&a=1", "https://example.com/A/../b?b=2&a=1"),
    ],
)
def test_rfc9111_2_primary_key(
    scheme: str, host: str | bytes, path: str | bytes, query: str | bytes, key: str
) -> None:
    assert primary_key(scheme, host, path, query) == key


def test_rfc9111_4_1_vary_names_are_normalized() -> None:
    headers = [(b"vary", b"Accept-Encoding, accept"), (b"vary", b" accept-encoding ,")]
    assert vary_names(headers) == (b"accept", b"accept-encoding")
    assert vary_names([(b"vary", b"*")]) == (b"*",)
    assert vary_names([]) == ()


def test_rfc9111_4_1_selecting_values_are_combined_and_trimmed() -> None:
    request = [(b"x-flavour", b" vanilla,mint "), (b"x-flavour", b"lemon")]
    assert vary_key(request, [b"x-flavour"]) == ((b"x-flavour", b"vanilla, mint, lemon"),)
    # Accept-Encoding is a preference list: normalised further (sorted), see test_cache_vary.
    request = [(b"accept-encoding", b" gzip,deflate "), (b"accept-encoding", b"br")]
    assert vary_key(request, [b"accept-encoding"]) == ((b"accept-encoding", b"br, deflate, gzip"),)
    assert vary_key([(b"accept-encoding", b"")], [b"accept-encoding"]) == (
        (b"accept-encoding", b""),
    )
    assert vary_key([], [b"accept-encoding"]) == ((b"accept-encoding", None),)


# --- Vary (RFC 9111 §4.1) -------------------------------------------------------------------

GZIP = [(b"accept-encoding", b"gzip")]
BR = [(b"accept-encoding", b"br")]
VARY = (b"vary", b"Accept-Encoding")


def test_rfc9111_4_1_two_variants_are_kept_and_selected() -> None:
    cache = ResponseCache(10_000, 1_000)
    assert cache.put(KEY, stored(VARY, request=GZIP, body=b"gzip-body"))
    assert cache.put(KEY, stored(VARY, request=BR, body=b"br-body"))
    assert len(cache) == 2
    gzip = cache.get(KEY, GZIP)
    br = cache.get(KEY, [(b"accept-encoding", b" br ")])
    assert gzip is not None and gzip.body == b"gzip-body"
    assert br is not None and br.body == b"br-body"
    assert cache.get(KEY, [(b"accept-encoding", b"identity")]) is None


def test_rfc9111_4_1_a_new_response_replaces_its_own_variant_only() -> None:
    cache = ResponseCache(10_000, 1_000)
    cache.put(KEY, stored(VARY, request=GZIP, body=b"old"))
    cache.put(KEY, stored(VARY, request=BR, body=b"br"))
    cache.put(KEY, stored(VARY, request=GZIP, body=b"new"))
    assert len(cache) == 2
    entry = cache.get(KEY, GZIP)
    assert entry is not None and entry.body == b"new"


def test_rfc9111_4_1_absent_header_matches_only_absent() -> None:
    cache = ResponseCache(10_000, 1_000)
    cache.put(KEY, stored(VARY, request=[], body=b"none"))
    cache.put(KEY, stored(VARY, request=[(b"accept-encoding", b"")], body=b"empty"))
    absent = cache.get(KEY, [])
    empty = cache.get(KEY, [(b"accept-encoding", b"")])
    assert absent is not None and absent.body == b"none"
    assert empty is not None and empty.body == b"empty"


def test_rfc9111_4_1_without_vary_every_request_matches() -> None:
    cache = ResponseCache(10_000, 1_000)
    cache.put(KEY, stored())
    assert cache.get(KEY, GZIP) is not None
    assert cache.get(KEY, []) is not None


def test_rfc9111_4_1_most_recent_matching_variant_wins() -> None:
    # The origin switched from Vary: Accept-Encoding to no Vary; both entries match.
    cache = ResponseCache(10_000, 1_000)
    cache.put(KEY, stored(VARY, request=GZIP, body=b"older", at=T0))
    cache.put(KEY, stored(body=b"newer", at=T0 + 10))
    entry = cache.get(KEY, GZIP)
    assert entry is not None and entry.body == b"newer"


def test_rfc9211_2_2_lookup_tells_uri_miss_from_vary_miss() -> None:
    cache = ResponseCache(10_000, 1_000)
    assert cache.lookup(KEY, "GET", GZIP, T0).fwd == "uri-miss"
    cache.put(KEY, stored(VARY, request=GZIP))
    assert cache.lookup(KEY, "GET", BR, T0).fwd == "vary-miss"
    hit = cache.lookup(KEY, "GET", GZIP, T0 + 1)
    assert hit.action is Action.HIT
    assert cache.lookup(KEY, "POST", GZIP, T0).action is Action.BYPASS


# --- size bounds and LRU --------------------------------------------------------------------


def test_max_entry_bytes_refuses_larger_bodies() -> None:
    cache = ResponseCache(100_000, 1_000)
    assert not cache.put(KEY, stored(body=b"x" * 1001))
    assert cache.put(KEY, stored(body=b"x" * 1000))
    assert len(cache) == 1


def test_an_entry_larger_than_max_bytes_is_refused_without_evicting() -> None:
    small = stored(body=b"a")
    cache = ResponseCache(small.size + 100, 10_000)
    cache.put("https://example.com/a", small)
    assert not cache.put(KEY, stored(body=b"x" * 500))
    assert len(cache) == 1 and cache.current_bytes == small.size


def test_lru_eviction_by_size() -> None:
    entry = stored(body=b"x" * 100)
    cache = ResponseCache(entry.size * 3, 1_000)
    for name in "abc":
        assert cache.put(f"https://example.com/{name}", stored(body=b"x" * 100))
    assert cache.current_bytes == entry.size * 3
    assert cache.get("https://example.com/a", []) is not None  # a is now most recently used
    cache.put("https://example.com/d", stored(body=b"x" * 100))
    assert "https://example.com/b" not in cache
    assert all(f"https://example.com/{n}" in cache for n in "acd")
    assert cache.current_bytes == entry.size * 3


def test_lru_evicts_as_many_as_needed_for_a_big_entry() -> None:
    small = stored(body=b"x" * 10)
    big = stored(body=b"x" * 500)
    cache = ResponseCache(big.size + small.size, 10_000)
    for name in "abcdef":
        cache.put(f"https://example.com/{name}", stored(body=b"x" * 10))
    assert cache.put(KEY, big)
    assert cache.current_bytes <= cache.max_bytes
    assert KEY in cache and "https://example.com/f" in cache and len(cache) == 2


def test_replacing_an_entry_keeps_accounting_exact() -> None:
    cache = ResponseCache(100_000, 10_000)
    cache.put(KEY, stored(body=b"x" * 100))
    cache.put(KEY, stored(body=b"x" * 10))
    assert len(cache) == 1
    entry = cache.get(KEY, [])
    assert entry is not None and cache.current_bytes == entry.size


def test_zero_sized_cache_stores_nothing_and_bad_sizes_are_refused() -> None:
    assert not ResponseCache(0, 0).put(KEY, stored())
    with pytest.raises(ValueError, match="max_bytes=-1"):
        ResponseCache(-1, 0)


def test_from_settings() -> None:
    cache = ResponseCache.from_settings(CacheSettings(max_bytes=1234, max_entry_bytes=56))
    assert (cache.max_bytes, cache.max_entry_bytes) == (1234, 56)


# --- invalidation (RFC 9111 §4.4) -----------------------------------------------------------


def test_rfc9111_4_4_invalidate_drops_every_variant() -> None:
    cache = ResponseCache(10_000, 1_000)
    cache.put(KEY, stored(VARY, request=GZIP))
    cache.put(KEY, stored(VARY, request=BR))
    cache.put("https://example.com/other", stored())
    assert cache.invalidate(KEY) == 2
    assert KEY not in cache and len(cache) == 1
    assert cache.invalidate(KEY) == 0
    cache.clear()
    assert len(cache) == 0 and cache.current_bytes == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "PURGE"])
@pytest.mark.parametrize("status", [200, 201, 204, 301, 303, 399])
def test_rfc9111_4_4_unsafe_methods_with_non_error_status_invalidate(
    method: str, status: int
) -> None:
    assert invalidation_keys(method, status, KEY, []) == [KEY]


@pytest.mark.parametrize(
    ("method", "status"),
    [("GET", 200), ("HEAD", 200), ("OPTIONS", 200), ("POST", 400), ("DELETE", 404), ("PUT", 500)],
)
def test_rfc9111_4_4_safe_methods_and_errors_invalidate_nothing(method: str, status: int) -> None:
    assert invalidation_keys(method, status, KEY, [(b"location", b"/x")]) == []


def test_rfc9111_4_4_location_and_content_location_on_the_same_origin() -> None:
    response = [
        (b"location", b"/users/5"),
        (b"content-location", b"https://EXAMPLE.com:443/users/5?view=full#top"),
    ]
    keys = invalidation_keys("POST", 201, "https://example.com/users", response)
    assert keys == [
        "https://example.com/users",
        "https://example.com/users/5",
        "https://example.com/users/5?view=full",
    ]


@pytest.mark.parametrize(
    "location",
    [
        b"https://evil.example/users/5",
        b"//evil.example/users/5",
        b"http://example.com/users/5",  # another scheme is another origin
        b"https://example.com:8443/users/5",
        b"https://attacker@evil.example/",
        b"mailto:a@example.com",
        b"http://[::1",  # unparsable
    ],
)
def test_rfc9111_4_4_other_origins_are_never_invalidated(location: bytes) -> None:
    keys = invalidation_keys("POST", 201, "https://example.com/users", [(b"location", location)])
    assert keys == ["https://example.com/users"]


def test_relative_location_resolves_against_the_target() -> None:
    keys = invalidation_keys("PUT", 200, "https://example.com/a/b?q=1", [(b"location", b"c")])
    assert keys == ["https://example.com/a/b?q=1", "https://example.com/a/c"]


def test_invalidation_keys_match_what_the_store_holds() -> None:
    cache = ResponseCache(10_000, 1_000)
    target = primary_key("https", "example.com", "/users", "")
    created = primary_key("https", "example.com", "/users/5", "")
    cache.put(target, stored())
    cache.put(created, stored())
    for key in invalidation_keys("POST", 201, target, [(b"location", b"/users/5")]):
        cache.invalidate(key)
    assert len(cache) == 0


@given(
    st.lists(
        st.tuples(st.sampled_from([b"location", b"Content-Location"]), st.binary(max_size=60)),
        max_size=3,
    )
)
def test_invalidation_keys_never_raise_and_stay_on_the_origin(response: Pairs) -> None:
    keys = invalidation_keys("POST", 200, KEY, response)
    assert keys[0] == KEY
    assert all(key.startswith("https://example.com/") for key in keys)
