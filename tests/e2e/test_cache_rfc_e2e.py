"""The cache's RFC rules of issue 15 end to end: the real gateway over TLS in front of the
counting echo upstream (``/cache/...``, see tests/support/echo_upstream.py) and a scripted
raw-socket origin for what an ASGI server cannot do (drop a connection).

"Served from the cache" is proved by the upstream's own count of what it answered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.scripted_upstream import DROP, ScriptedUpstream, interim, response

from e2e.harness import EchoUpstream, Stack, StackConfig, stack

pytestmark = pytest.mark.e2e

Params = dict[str, str]


# One scripted origin per dropping test: a dropped connection marks its server DOWN at once
# (passive health), so each test that drops one needs a server of its own.
FORBIDDING = ["must-revalidate", "proxy-revalidate", "no-cache", "s-maxage=1"]
ORIGINS = ["allowed", "hints", *(name.split("=")[0] for name in FORBIDDING)]


@pytest.fixture(scope="module")
def origins() -> Iterator[dict[str, ScriptedUpstream]]:
    with contextlib.ExitStack() as stack_:
        yield {name: stack_.enter_context(ScriptedUpstream()) for name in ORIGINS}


@pytest.fixture(scope="module")
def cached(
    tmp_path_factory: pytest.TempPathFactory, origins: dict[str, ScriptedUpstream]
) -> Iterator[Stack]:
    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        return StackConfig(
            pools={"main": [upstreams["r1"].url]}
            | {f"scripted-{name}": [origin.url] for name, origin in origins.items()},
            routes=[
                {"path_prefix": "/", "upstream": "main"},
                *({"path_prefix": f"/{name}", "upstream": f"scripted-{name}"} for name in origins),
            ],
            cache={"enabled": True, "heuristic_fraction": 0.1},
        )

    directory: Path = tmp_path_factory.mktemp("cache-rfc")
    with stack(directory, ["r1"], build) as s:
        yield s


@pytest.fixture
def client(cached: Stack) -> Iterator[httpx.Client]:
    with cached.gateway.client() as c:
        yield c


def get(client: httpx.Client, path: str, params: Params, **kw: Any) -> httpx.Response:
    return client.get(path, params=params, **kw)


# --- RFC 9213 CDN-Cache-Control -------------------------------------------------------------


def test_rfc9213_cdn_cache_control_decides_and_is_not_forwarded(
    cached: Stack, client: httpx.Client
) -> None:
    params = {"cc": "no-store", "cdn": "max-age=600"}
    first = get(client, "/cache/cdn", params)
    assert first.status_code == 200 and "stored" in first.headers["cache-status"]
    second = get(client, "/cache/cdn", params)
    assert second.headers["x-cache"] == "HIT"
    assert cached.upstreams["r1"].answered("/cache/cdn") == 1
    for forwarded in (first, second):
        assert "cdn-cache-control" not in forwarded.headers
        assert forwarded.headers["cache-control"] == "no-store"  # for the caches downstream


def test_rfc9213_cdn_no_store_overrides_a_cacheable_cache_control(
    cached: Stack, client: httpx.Client
) -> None:
    params = {"cc": "public, max-age=600", "cdn": "no-store"}
    for _ in range(2):
        response = get(client, "/cache/cdn-nostore", params)
        assert response.headers["x-cache"] == "MISS"
        assert "cdn-cache-control" not in response.headers
    assert cached.upstreams["r1"].answered("/cache/cdn-nostore") == 2


# --- RFC 9111 §4.2.2 heuristic freshness ----------------------------------------------------


def test_rfc9111_4_2_2_heuristic_freshness_from_last_modified(
    cached: Stack, client: httpx.Client
) -> None:
    params = {"lm": "36000"}  # modified 10 h ago, no explicit freshness: fresh for 1 h
    first = get(client, "/cache/heuristic", params)
    assert "stored" in first.headers["cache-status"]
    hit = get(client, "/cache/heuristic", params)
    assert hit.headers["x-cache"] == "HIT"
    status = hit.headers["cache-status"]
    assert "detail=heuristic" in status
    ttl = int(status.split("ttl=")[1].split(";")[0])
    assert 3500 <= ttl <= 3600
    assert cached.upstreams["r1"].answered("/cache/heuristic") == 1


def test_rfc9111_4_2_2_an_age_beyond_the_heuristic_lifetime_is_revalidated(
    cached: Stack, client: httpx.Client
) -> None:
    params = {"lm": "36000", "age": "7200"}  # heuristically fresh for 1 h, already 2 h old
    get(client, "/cache/heuristic-old", params)
    again = get(client, "/cache/heuristic-old", params)
    # Revalidated with If-Modified-Since: the upstream's 304 confirms the stored body.
    assert again.headers["x-cache"] == "REVALIDATED"
    assert again.json()["n"] == 1
    assert cached.upstreams["r1"].answered("/cache/heuristic-old") == 2


# --- RFC 9111 §3 any status with explicit freshness, §5.2.2.3 must-understand ---------------


@pytest.mark.parametrize("status", [302, 400, 503, 599])
def test_rfc9111_3_any_status_with_explicit_freshness_is_cached(
    cached: Stack, client: httpx.Client, status: int
) -> None:
    params = {"cc": "max-age=60", "status": str(status)}
    path = f"/cache/status-{status}"
    first = get(client, path, params, follow_redirects=False)
    second = get(client, path, params, follow_redirects=False)
    assert first.status_code == second.status_code == status
    assert second.headers["x-cache"] == "HIT" and second.json() == first.json()
    assert cached.upstreams["r1"].answered(path) == 1


def test_rfc9111_5_2_2_3_must_understand_overrides_no_store_for_a_known_status(
    cached: Stack, client: httpx.Client
) -> None:
    understood = {"cc": "must-understand, no-store, max-age=60"}
    get(client, "/cache/mu", understood)
    assert get(client, "/cache/mu", understood).headers["x-cache"] == "HIT"
    unknown = {**understood, "status": "299"}
    get(client, "/cache/mu-unknown", unknown)
    assert get(client, "/cache/mu-unknown", unknown).headers["x-cache"] == "MISS"
    r1 = cached.upstreams["r1"]
    assert (r1.answered("/cache/mu"), r1.answered("/cache/mu-unknown")) == (1, 2)


# --- qualified private / no-cache and Set-Cookie --------------------------------------------


def test_rfc9111_5_2_2_7_private_field_is_stored_without_the_field(
    cached: Stack, client: httpx.Client
) -> None:
    params = {"cc": 'max-age=60, private="X-User"', "hdr": "X-User: alice"}
    first = get(client, "/cache/private-field", params)
    assert first.headers["x-user"] == "alice"  # the client it was made for gets it
    hit = get(client, "/cache/private-field", params)
    assert hit.headers["x-cache"] == "HIT" and "x-user" not in hit.headers
    assert cached.upstreams["r1"].answered("/cache/private-field") == 1


def test_set_cookie_is_stored_only_when_the_origin_lists_it_and_never_replayed(
    cached: Stack, client: httpx.Client
) -> None:
    params = {"cc": 'public, max-age=60, no-cache="Set-Cookie"', "cookie": "session=alice"}
    first = get(client, "/cache/cookie-listed", params)
    assert first.headers["set-cookie"] == "session=alice"
    client.cookies.clear()
    hit = get(client, "/cache/cookie-listed", params)
    assert hit.headers["x-cache"] == "HIT" and "set-cookie" not in hit.headers
    assert cached.upstreams["r1"].answered("/cache/cookie-listed") == 1


# --- RFC 9111 §4.1 Vary normalisation -------------------------------------------------------


def test_rfc9111_4_1_equivalent_accept_encoding_shares_one_variant(
    cached: Stack, client: httpx.Client
) -> None:
    params = {"cc": "max-age=60", "vary": "Accept-Encoding"}
    get(client, "/cache/vary-norm", params, headers={"accept-encoding": "gzip, br"})
    for equivalent in ("br, gzip", "BR;q=1.0, GZip", "gzip,br"):
        again = get(client, "/cache/vary-norm", params, headers={"accept-encoding": equivalent})
        assert again.headers["x-cache"] == "HIT", equivalent
    other = get(client, "/cache/vary-norm", params, headers={"accept-encoding": "gzip;q=0.5, br"})
    assert other.headers["x-cache"] == "MISS"
    assert cached.upstreams["r1"].answered("/cache/vary-norm") == 2


# --- 304s: client If-Modified-Since, upstream 304 updating the stored headers ---------------


def test_rfc9111_4_3_2_if_modified_since_from_the_date_without_last_modified(
    client: httpx.Client,
) -> None:
    params = {"cc": "max-age=60"}
    stored = get(client, "/cache/ims-date", params)
    date = stored.headers["date"]
    conditional = get(client, "/cache/ims-date", params, headers={"if-modified-since": date})
    assert conditional.status_code == 304 and conditional.headers["x-cache"] == "HIT"


def test_rfc9111_4_3_4_an_upstream_304_updates_the_stored_headers(
    cached: Stack, client: httpx.Client
) -> None:
    params = {"cc": "max-age=1", "etag": '"v1"', "age": "5"}  # stale on arrival
    stored = get(client, "/cache/update304", params)
    assert stored.headers["x-served"] == "1"
    revalidated = get(client, "/cache/update304", params)
    assert revalidated.headers["x-cache"] == "REVALIDATED"
    assert revalidated.headers["x-served"] == "2"  # the 304's field replaced the stored one
    assert revalidated.json()["n"] == 1  # the body is still the stored one
    assert cached.upstreams["r1"].answered("/cache/update304") == 2


# --- ranges from the cache ------------------------------------------------------------------


def test_rfc9110_14_a_range_is_answered_from_the_stored_response(
    cached: Stack, client: httpx.Client
) -> None:
    params = {"cc": "max-age=60", "etag": '"r1"'}
    whole = get(client, "/cache/range", params).content
    single = get(client, "/cache/range", params, headers={"range": "bytes=2-9"})
    assert single.status_code == 206 and single.content == whole[2:10]
    assert single.headers["content-range"] == f"bytes 2-9/{len(whole)}"
    assert single.headers["x-cache"] == "HIT"
    multi = get(client, "/cache/range", params, headers={"range": "bytes=0-0, -1"})
    assert multi.status_code == 206
    content_type = multi.headers["content-type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    boundary = content_type.split("boundary=")[1].encode()
    parts = multi.content.split(b"--" + boundary)
    assert parts[-1] == b"--\r\n" and len(parts) == 4  # preamble, two parts, the close
    assert parts[1].endswith(b"\r\n\r\n" + whole[:1] + b"\r\n")
    assert parts[2].endswith(b"\r\n\r\n" + whole[-1:] + b"\r\n")
    beyond = get(client, "/cache/range", params, headers={"range": f"bytes={len(whole)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(whole)}"
    changed = get(
        client, "/cache/range", params, headers={"range": "bytes=0-1", "if-range": '"old"'}
    )
    assert changed.status_code == 200 and changed.content == whole
    assert cached.upstreams["r1"].answered("/cache/range") == 1


def test_a_range_miss_goes_upstream_and_stores_nothing(cached: Stack, client: httpx.Client) -> None:
    params = {"cc": "max-age=60"}
    ranged = get(client, "/cache/range-miss", params, headers={"range": "bytes=0-3"})
    assert ranged.headers["x-cache"] == "BYPASS"
    whole = get(client, "/cache/range-miss", params)
    assert whole.headers["x-cache"] == "MISS" and "stored" in whole.headers["cache-status"]
    assert cached.upstreams["r1"].answered("/cache/range-miss") == 2


# --- POST with Content-Location (RFC 9110 §9.3.3): decided against, for safety ---------------


def test_a_post_response_is_never_served_to_a_later_get(
    cached: Stack, client: httpx.Client
) -> None:
    params = {"cc": "public, max-age=60", "cl": "/cache/post-cl"}
    posted = client.post("/cache/post-cl", params=params, content=b"x")
    assert posted.status_code == 200 and posted.headers["x-cache"] == "BYPASS"
    later = get(client, "/cache/post-cl", params)
    assert later.headers["x-cache"] == "MISS" and later.json()["method"] == "GET"
    assert cached.upstreams["r1"].answered("/cache/post-cl") == 2


# --- stale-if-error on a dropped upstream connection ----------------------------------------


STALE_OK = [("cache-control", "max-age=1, stale-if-error=600"), ("age", "5")]


def test_rfc5861_4_stale_if_error_stands_in_for_a_dropped_connection(
    origins: dict[str, ScriptedUpstream], client: httpx.Client
) -> None:
    origin = origins["allowed"]
    body = response(200, [*STALE_OK, ("etag", '"d1"')], b"stored body")
    origin.script("/allowed/page", body, DROP)
    stored = client.get("/allowed/page")
    assert stored.content == b"stored body" and "stored" in stored.headers["cache-status"]
    stale = client.get("/allowed/page")
    assert stale.status_code == 200 and stale.content == b"stored body"
    assert stale.headers["x-cache"] == "STALE"
    assert "detail=stale-if-error" in stale.headers["cache-status"]
    assert origin.count("/allowed/page") >= 2  # asked (a retry too, maybe), and dropped us


@pytest.mark.parametrize("forbidding", FORBIDDING)
def test_rfc9111_4_2_4_no_stale_on_a_dropped_connection_when_forbidden(
    origins: dict[str, ScriptedUpstream], client: httpx.Client, forbidding: str
) -> None:
    name = forbidding.split("=")[0]
    path = f"/{name}/page"
    headers = [
        ("cache-control", f"max-age=1, stale-if-error=600, {forbidding}"),
        ("age", "5"),
        ("etag", '"f1"'),
    ]
    origins[name].script(path, response(200, headers, b"stored body"), DROP)
    assert client.get(path).status_code == 200
    failed = client.get(path)
    assert failed.status_code == 502 and failed.content != b"stored body"
    assert origins[name].count(path) >= 2


# --- 1xx interim responses (RFC 9110 §15.2, RFC 8297 103 Early Hints) -----------------------


def raw_get(cached: Stack, path: str, version: str = "1.1") -> bytes:
    """Everything the gateway sends for one GET until the final body ``hinted`` arrived."""
    with cached.gateway.tls_socket() as sock:
        host = f"localhost:{cached.gateway.https_port}"
        sock.sendall(f"GET {path} HTTP/{version}\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while not data.endswith(b"hinted"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    return data


def test_rfc8297_early_hints_reach_the_client_first_and_are_never_cached(
    cached: Stack, origins: dict[str, ScriptedUpstream]
) -> None:
    origin = origins["hints"]
    hints = interim(103, [("link", "</style.css>; rel=preload"), ("connection", "x-hop")])
    final = response(200, [("cache-control", "max-age=60")], b"hinted")
    origin.script("/hints/hints", hints + final)
    first = raw_get(cached, "/hints/hints")
    head, _, rest = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 103 Early Hints\r\n")
    assert b"link: </style.css>; rel=preload" in head.lower()
    assert b"connection" not in head.lower()  # hop-by-hop fields are not relayed
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert b"x-cache: MISS" in rest and b"stored" in rest
    again = raw_get(cached, "/hints/hints")
    assert again.startswith(b"HTTP/1.1 200 ") and b" 103 " not in again
    assert b"x-cache: HIT" in again
    assert origin.count("/hints/hints") == 1


def test_rfc9110_15_2_no_interim_response_to_an_http_1_0_client(
    cached: Stack, origins: dict[str, ScriptedUpstream]
) -> None:
    origin = origins["hints"]
    hints = interim(103, [("link", "</a.css>")])
    origin.script(
        "/hints/hints10", hints + response(200, [("cache-control", "no-store")], b"hinted")
    )
    data = raw_get(cached, "/hints/hints10", version="1.0")
    assert data.startswith(b"HTTP/1.1 200 ") and b"103" not in data
    assert origin.count("/hints/hints10") == 1
