"""The response cache end to end: the real gateway over TLS in front of counting upstreams.

The echo upstreams' ``/cache/...`` endpoints answer with the caching headers a test asks for
in the query string and count what they really answered (``/cache-count``), so "served from
the cache" is proved by the upstream never seeing the request.  Responses that must be stale
at once carry ``Age`` beyond their ``max-age``: no test sleeps for a clock to move.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from e2e.harness import EchoUpstream, Stack, StackConfig, stack

pytestmark = pytest.mark.e2e

Params = dict[str, str]


def cache_config(upstreams: dict[str, EchoUpstream]) -> StackConfig:
    """``/`` -> pool main (c1); ``/doomed/...`` -> pool doomed (c2, killed by one test);
    ``/flaky/...`` -> pool flaky (c3, switched to 503 by one test); ``/nocache/...`` -> c1
    with the cache turned off for the route."""
    return StackConfig(
        pools={
            "main": [upstreams["c1"].url],
            "doomed": [upstreams["c2"].url],
            "flaky": [upstreams["c3"].url],
        },
        routes=[
            {"path_prefix": "/", "upstream": "main"},
            {"path_prefix": "/doomed", "upstream": "doomed", "strip_prefix": True},
            {"path_prefix": "/flaky", "upstream": "flaky", "strip_prefix": True},
            {"path_prefix": "/nocache", "upstream": "main", "strip_prefix": True, "cache": False},
        ],
        cache={"enabled": True, "max_entry_bytes": 1024 * 1024},
    )


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(tmp_path_factory.mktemp("cache"), ["c1", "c2", "c3"], cache_config) as s:
        yield s


@pytest.fixture
def client(cached: Stack) -> Iterator[httpx.Client]:
    with cached.gateway.client() as c:
        yield c


def get(client: httpx.Client, path: str, params: Params, **kw: Any) -> httpx.Response:
    response = client.get(path, params=params, **kw)
    assert response.status_code == 200, response.text
    return response


def test_a_hit_is_served_without_an_upstream_request(cached: Stack, client: httpx.Client) -> None:
    c1 = cached.upstreams["c1"]
    params = {"cc": "max-age=60"}
    miss = get(client, "/cache/hit", params)
    assert miss.headers["x-cache"] == "MISS"
    assert miss.headers["cache-status"] == "gateway; fwd=uri-miss; fwd-status=200; stored"
    hit = get(client, "/cache/hit", params)
    assert hit.headers["x-cache"] == "HIT"
    assert hit.headers["cache-status"].startswith("gateway; hit; ttl=")
    assert hit.json() == miss.json() and c1.answered("/cache/hit") == 1
    assert hit.headers.get_list("via") == ["1.1 gateway"]
    # The upstream's counter itself goes through the gateway uncached (no-store).
    counter = client.get("/cache-count")
    assert counter.headers["x-cache"] == "MISS" and "stored" not in counter.headers["cache-status"]


def test_age_counts_the_upstream_age_and_grows(client: httpx.Client) -> None:
    params = {"cc": "max-age=60", "age": "5"}
    get(client, "/cache/age", params)
    hit = get(client, "/cache/age", params)
    assert hit.headers["x-cache"] == "HIT" and int(hit.headers["age"]) >= 5


def test_vary_keeps_one_entry_per_accept_encoding(cached: Stack, client: httpx.Client) -> None:
    params = {"cc": "max-age=60", "vary": "Accept-Encoding"}
    for _ in range(2):
        for encoding in ("gzip", "br"):
            response = get(client, "/cache/vary", params, headers={"accept-encoding": encoding})
            assert response.json()["accept_encoding"] == encoding
    assert cached.upstreams["c1"].answered("/cache/vary") == 2


def test_an_authorized_response_never_reaches_an_anonymous_client(
    cached: Stack, client: httpx.Client
) -> None:
    params = {"cc": "max-age=60"}  # neither public nor s-maxage
    secret = get(client, "/cache/auth", params, headers={"authorization": "Bearer alice"})
    assert secret.json()["authorization"] == "Bearer alice"
    assert "stored" not in secret.headers["cache-status"]
    for _ in range(2):
        anonymous = get(client, "/cache/auth", params)
        assert anonymous.json()["authorization"] == ""
    # The anonymous response was cached, the authorized one never was.
    assert cached.upstreams["c1"].answered("/cache/auth") == 2
    assert anonymous.headers["x-cache"] == "HIT"


def test_set_cookie_is_never_replayed(cached: Stack, client: httpx.Client) -> None:
    params = {"cc": "public, max-age=60", "cookie": "session=alice"}
    for _ in range(3):
        response = get(client, "/cache/cookie", params)
        assert response.headers["x-cache"] == "MISS"
        client.cookies.clear()
    assert cached.upstreams["c1"].answered("/cache/cookie") == 3


def test_a_client_supplied_forwarding_header_cannot_poison_the_cache(
    cached: Stack, client: httpx.Client
) -> None:
    params = {"cc": "max-age=60"}
    first = get(client, "/cache/poison", params, headers={"x-forwarded-host": "evil.test"})
    real_host = f"localhost:{cached.gateway.https_port}"
    assert first.json()["forwarded_host"] == real_host  # the gateway replaced the header
    with cached.gateway.client() as victim:
        second = get(victim, "/cache/poison", params)
    assert second.headers["x-cache"] == "HIT"
    assert "evil" not in second.text and second.json()["forwarded_host"] == real_host


def test_100_concurrent_misses_make_one_upstream_request(cached: Stack) -> None:
    gw = cached.gateway
    params = {"cc": "max-age=60", "delay": "0.2"}  # the leader's fetch outlasts the herd

    async def herd() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(
            verify=gw.ssl_context(),
            base_url=gw.base_url,
            trust_env=False,
            limits=limits,
            timeout=10,
        ) as client:
            # Open the 100 connections first, so the herd arrives at once.
            await asyncio.gather(*(client.get("/cache-count") for _ in range(100)))
            return await asyncio.gather(
                *(client.get("/cache/herd", params=params) for _ in range(100))
            )

    responses = asyncio.run(herd())
    assert [r.status_code for r in responses] == [200] * 100
    assert {r.json()["n"] for r in responses} == {1}
    assert cached.upstreams["c1"].answered("/cache/herd") == 1
    assert sum(r.headers["x-cache"] == "MISS" for r in responses) == 1


def test_stale_if_error_stands_in_for_a_503(cached: Stack, client: httpx.Client) -> None:
    c3 = cached.upstreams["c3"]
    params = {"cc": "max-age=1, stale-if-error=600", "age": "5"}  # stale on arrival
    stored = get(client, "/flaky/cache/sie", params)
    assert "stored" in stored.headers["cache-status"]
    with httpx.Client(trust_env=False, timeout=5) as direct:
        direct.post(f"{c3.url}/cache-fail/on").raise_for_status()
        try:
            stale = get(client, "/flaky/cache/sie", params)
            unrelated = client.get("/flaky/cache/never-stored", params=params)
        finally:
            direct.post(f"{c3.url}/cache-fail/off").raise_for_status()
    assert stale.headers["x-cache"] == "STALE" and stale.json() == stored.json()
    assert "fwd-status=503" in stale.headers["cache-status"]
    assert c3.answered("/cache/sie") == 2  # the upstream was asked, and its 503 was hidden
    assert unrelated.status_code == 503  # nothing stored, nothing to stand in


def test_stale_if_error_stands_in_for_a_dead_upstream(cached: Stack, client: httpx.Client) -> None:
    params = {"cc": "max-age=1, stale-if-error=600", "age": "5"}
    stored = get(client, "/doomed/cache/sie", params)
    cached.upstreams["c2"].process.stop()
    stale = get(client, "/doomed/cache/sie", params)
    assert stale.headers["x-cache"] == "STALE" and stale.json() == stored.json()
    assert "detail=stale-if-error" in stale.headers["cache-status"]
    assert client.get("/doomed/cache/other").status_code in (502, 503)


def test_a_304_revalidates_the_stored_response(cached: Stack, client: httpx.Client) -> None:
    params = {"cc": "max-age=1", "etag": '"v1"', "age": "5"}  # stale on arrival, validatable
    stored = get(client, "/cache/etag", params)
    revalidated = get(client, "/cache/etag", params)
    assert revalidated.headers["x-cache"] == "REVALIDATED"
    assert "fwd-status=304" in revalidated.headers["cache-status"]
    assert revalidated.json() == stored.json()  # the body came from the cache
    assert revalidated.headers["etag"] == '"v1"'
    assert cached.upstreams["c1"].answered("/cache/etag") == 2


def test_stale_while_revalidate_refreshes_in_the_background(
    cached: Stack, client: httpx.Client
) -> None:
    c1 = cached.upstreams["c1"]
    params = {"cc": "max-age=1, stale-while-revalidate=600", "age": "5"}
    assert get(client, "/cache/swr", params).json()["n"] == 1
    stale = get(client, "/cache/swr", params)
    assert stale.headers["x-cache"] == "STALE" and stale.json()["n"] == 1
    deadline = time.monotonic() + 5
    while c1.answered("/cache/swr") < 2:
        assert time.monotonic() < deadline, "no background refresh"
        time.sleep(0.02)
    refreshed = get(client, "/cache/swr", params)
    assert refreshed.json()["n"] == 2  # the refresh replaced the entry


def test_a_post_invalidates_the_stored_get(client: httpx.Client) -> None:
    params = {"cc": "max-age=60"}
    get(client, "/cache/inv", params)
    assert get(client, "/cache/inv", params).headers["x-cache"] == "HIT"
    posted = client.post("/cache/inv", params=params, content=b"change")
    assert posted.status_code == 200 and posted.headers["x-cache"] == "BYPASS"
    assert get(client, "/cache/inv", params).headers["x-cache"] == "MISS"


def test_a_route_can_opt_out(cached: Stack, client: httpx.Client) -> None:
    params = {"cc": "max-age=60"}
    for _ in range(2):
        response = get(client, "/nocache/cache/optout", params)
        assert "x-cache" not in response.headers and "cache-status" not in response.headers
    assert cached.upstreams["c1"].answered("/cache/optout") == 2


def test_the_access_log_records_the_cache_outcome(cached: Stack, client: httpx.Client) -> None:
    params = {"cc": "max-age=60"}
    get(client, "/cache/logged", params)
    get(client, "/cache/logged", params)
    gw = cached.gateway
    gw.wait_for_log('/cache/logged?cc=max-age%3D60 HTTP/1.1" 200')
    deadline = time.monotonic() + 3
    while len(lines := gw.log_lines("/cache/logged")) < 2:
        assert time.monotonic() < deadline, gw.process.output()
        time.sleep(0.05)
    assert "cache=MISS" in lines[0] and "cache=HIT" in lines[1]
