"""Hot hits (gateway.cache.hot) against the real gateway: fresh hits the HTTP/1.1 listener
answers itself are the full path's answers, and nothing that should reach the full path is
answered hot: unsafe requests, purges, staleness, requests that are not plain, middlewares,
pipelining, and with two workers on the shared store, another worker's invalidation.

``gateway_cache_hot_hits_total`` (``/metrics``) says how many hits were answered hot, so each
test proves which path answered; the echo upstream's ``X-Served`` says which fetch a body is.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness import (
    Admin,
    EchoUpstream,
    RssSampler,
    Stack,
    StackConfig,
    free_port,
    read_response,
    stack,
)

pytestmark = pytest.mark.e2e

HOT = "gateway_cache_hot_hits_total"


class Site:
    """The stack, its echo upstream ``h``, the access-log file and the admin API."""

    def __init__(self, s: Stack, admin_port: int, access_log: Path) -> None:
        self.stack = s
        self.upstream = s.upstreams["h"]
        self.access_log = access_log
        self.admin = Admin(s, admin_port)

    def metric(self, name: str, **labels: str) -> float:
        return self.admin.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def hot(self) -> float:
        return self.metric(HOT)


@contextlib.contextmanager
def site(tmp_path: Path, workers: int = 1) -> Iterator[Site]:
    admin_port = free_port()
    access_log = tmp_path / "logs" / "access.log"

    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        return StackConfig(
            pools={"main": [upstreams["h"].url]},
            routes=[
                {"path_prefix": "/", "upstream": "main"},
                {
                    "path_prefix": "/wrapped",
                    "upstream": "main",
                    "strip_prefix": True,
                    "middlewares": ["stamp"],
                },
            ],
            middlewares={"stamp": {"type": "headers", "response_set": {"x-stamp": "1"}}},
            cache={"enabled": True},
            admin={"port": admin_port},
            gateway={"workers": workers, "access_log": str(access_log)},
        )

    with stack(tmp_path / "gw", ["h"], build) as s:
        hot = Site(s, admin_port, access_log)
        with hot.admin:
            yield hot


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with site(tmp_path_factory.mktemp("hot")) as s:
        yield s


@pytest.fixture
def client(one: Site) -> Iterator[httpx.Client]:
    with one.stack.gateway.client() as c:
        yield c


def warm(client: httpx.Client, path: str, **params: str) -> httpx.Response:
    """A miss (stored), then a full-path hit (published): the next one can be hot."""
    params.setdefault("cc", "max-age=60")
    for _ in range(2):
        response = client.get(path, params=params)
        assert response.status_code == 200, response.text
    assert response.headers["x-cache"] == "HIT"
    return response


def without_volatile(response: httpx.Response) -> list[tuple[str, str]]:
    """The response's fields in order, without those that differ between any two hits."""
    volatile = {"x-request-id", "age", "cache-status"}
    return [(k, v if k not in volatile else "") for k, v in response.headers.multi_items()]


def test_repeated_hits_skip_the_full_path_with_the_same_bytes(
    one: Site, client: httpx.Client
) -> None:
    full = warm(client, "/cache/same")
    before = one.hot()
    hits = [client.get("/cache/same", params={"cc": "max-age=60"}) for _ in range(3)]
    assert one.hot() - before >= 2  # one may fall on the once-a-second full-path refresh
    assert one.upstream.answered("/cache/same") == 1
    for hit in hits:
        assert hit.status_code == 200 and hit.content == full.content
        assert without_volatile(hit) == without_volatile(full)
        assert hit.headers["cache-status"].startswith("gateway; hit; ttl=")
        assert hit.headers["x-request-id"] != full.headers["x-request-id"]
    # A field the hot path does not know sends the request the full way: same answer.
    forced = client.get("/cache/same", params={"cc": "max-age=60"}, headers={"x-full": "1"})
    assert without_volatile(forced) == without_volatile(hits[0])


def test_hot_hits_are_logged_and_counted(one: Site, client: httpx.Client) -> None:
    warm(client, "/cache/logged")
    hits_before = one.metric("gateway_cache_requests_total", result="hit")
    hot_before = one.hot()
    ids = [client.get("/cache/logged", params={"cc": "max-age=60"}) for _ in range(3)]
    assert one.hot() > hot_before
    assert one.metric("gateway_cache_requests_total", result="hit") - hits_before == 3
    wanted = [r.headers["x-request-id"] for r in ids]
    deadline = time.monotonic() + 5
    while True:  # the access log is written in batches
        text = one.access_log.read_text() if one.access_log.exists() else ""
        if all(f"id={i}" in text for i in wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for request_id in wanted:
        (line,) = [line for line in text.splitlines() if f"id={request_id}" in line]
        assert '"GET /cache/logged?cc=max-age%3D60 HTTP/1.1" 200' in line and "cache=HIT" in line


def test_an_unsafe_request_ends_hot_hits(one: Site, client: httpx.Client) -> None:
    warm(client, "/cache/unsafe")
    assert client.get("/cache/unsafe", params={"cc": "max-age=60"}).headers["x-served"] == "1"
    assert client.post("/cache/unsafe", params={"cc": "max-age=60"}).status_code == 200
    after = client.get("/cache/unsafe", params={"cc": "max-age=60"})
    assert after.headers["x-cache"] == "MISS" and after.headers["x-served"] == "3"


def test_a_purge_ends_hot_hits(one: Site, client: httpx.Client) -> None:
    warm(client, "/cache/purged")
    purged = one.admin.client.delete("/api/cache", params={"prefix": "/cache/purged"})
    assert purged.status_code == 200 and purged.json()["purged"] == 1
    after = client.get("/cache/purged", params={"cc": "max-age=60"})
    assert after.headers["x-cache"] == "MISS" and after.headers["x-served"] == "2"


def test_a_stale_entry_is_never_answered_hot(one: Site, client: httpx.Client) -> None:
    params = {"cc": "max-age=2", "age": "1"}  # stale one second after it was stored
    warm(client, "/cache/stale", **params)
    stored = time.monotonic()
    assert client.get("/cache/stale", params=params).headers["x-cache"] == "HIT"
    time.sleep(max(0.0, 1.1 - (time.monotonic() - stored)))  # the clock is the event here
    after = client.get("/cache/stale", params=params)
    assert after.headers["x-cache"] != "HIT" and one.upstream.answered("/cache/stale") == 2


@pytest.mark.parametrize(
    ("headers", "method", "expect"),
    [
        ({"cache-control": "max-age=0"}, "GET", "MISS"),  # the request's own rules
        ({"range": "bytes=0-3"}, "GET", "HIT"),  # a 206 from the stored response
        ({"if-none-match": "*"}, "GET", "HIT"),  # a 304
        ({"x-full": "1"}, "HEAD", "HIT"),
    ],
)
def test_requests_that_are_not_plain_take_the_full_path(
    one: Site, client: httpx.Client, headers: dict[str, str], method: str, expect: str
) -> None:
    path = f"/cache/plain-{method}-{'-'.join(headers)}"
    warm(client, path)
    before = one.hot()
    response = client.request(method, path, params={"cc": "max-age=60"}, headers=headers)
    assert response.headers["x-cache"] == expect
    assert one.hot() == before
    if "range" in headers:
        assert response.status_code == 206 and len(response.content) == 4
    if "if-none-match" in headers:
        assert response.status_code == 304 and response.content == b""
    if method == "HEAD":
        assert response.status_code == 200 and response.content == b""


def test_head_and_connection_close_are_answered_hot_as_the_full_path_would(one: Site) -> None:
    """A HEAD gets the GET's head without the body; ``Connection: close`` gets
    ``connection: close`` and the close, field for field as on the full path."""
    target = b"/cache/closing?cc=max-age%3D60"
    with one.stack.gateway.tls_socket() as sock:
        for _ in range(2):  # stored, then published
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % target)
            get = read_response(sock)
        before = one.hot()
        sock.sendall(b"HEAD %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % target)
        head = read_response(sock, head_only=True)
        assert one.hot() - before == 1
    assert head[0] == 200 and head[2] == b""
    assert head[1]["content-length"] == get[1]["content-length"]
    assert {k for k in head[1] if k not in ("age", "x-request-id")} == {
        k for k in get[1] if k not in ("age", "x-request-id")
    }
    results = {}
    for kind, extra in (("hot", b""), ("full", b"X-Full: 1\r\n")):
        before = one.hot()
        with one.stack.gateway.tls_socket() as sock:
            sock.sendall(
                b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%s\r\n"
                % (target, extra)
            )
            status, headers, body = read_response(sock)
            assert sock.recv(1) == b""  # closed after the response
            results[kind] = (status, headers["connection"], headers["x-cache"], body)
            counted = one.hot() - before
            assert counted == (1 if kind == "hot" else 0)
    assert results["hot"] == results["full"] == (200, ["close"], ["HIT"], get[2])


def test_http2_hits_are_answered_hot_with_the_full_paths_fields(one: Site) -> None:
    """Over HTTP/2 a fresh hit is answered by the protocol itself, field for field as the full
    path answers it over HTTP/2, HEAD included; the access log says HTTP/2."""
    params = {"cc": "max-age=60"}
    with one.stack.gateway.client(http2=True) as h2c:
        full = warm(h2c, "/cache/h2", **params)  # stored, then published by an HTTP/2 request
        assert full.http_version == "HTTP/2"
        before = one.hot()
        hits = [h2c.get("/cache/h2", params=params) for _ in range(3)]
        assert one.hot() - before >= 2  # one may fall on the once-a-second full-path refresh
        head = h2c.head("/cache/h2", params=params)
        forced = h2c.get("/cache/h2", params=params, headers={"x-full": "1"})
    assert one.upstream.answered("/cache/h2") == 1
    for hit in hits:
        assert (hit.status_code, hit.http_version, hit.content) == (200, "HTTP/2", full.content)
        assert without_volatile(hit) == without_volatile(full) == without_volatile(forced)
        assert hit.headers["cache-status"].startswith("gateway; hit; ttl=")
    assert head.status_code == 200 and head.content == b""
    assert without_volatile(head) == without_volatile(full)
    wanted = hits[-1].headers["x-request-id"]
    deadline = time.monotonic() + 5
    while True:  # the access log is written in batches
        text = one.access_log.read_text() if one.access_log.exists() else ""
        if f"id={wanted}" in text or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (line,) = [line for line in text.splitlines() if f"id={wanted}" in line]
    assert '"GET /cache/h2?cc=max-age%3D60 HTTP/2" 200' in line and "cache=HIT" in line


def test_a_hot_entry_published_over_either_protocol_serves_both(one: Site) -> None:
    """The key is the server name, Host and target, not the protocol: a hit published by an
    HTTP/1.1 request is answered hot over HTTP/2, and the other way round, with a body larger
    than one DATA frame."""
    for first, then in ((False, True), (True, False)):
        path = "/json"  # a 100,000-byte document: seven DATA frames
        params = {"cc": "max-age=60", "n": "100000", "order": str(int(first))}
        with one.stack.gateway.client(http2=first) as a:
            full = warm(a, path, **params)
        with one.stack.gateway.client(http2=then) as b:
            before = one.hot()
            hit = b.get(path, params=params)
            assert one.hot() - before == 1
        assert hit.http_version == ("HTTP/2" if then else "HTTP/1.1")
        assert hit.content == full.content and len(hit.content) == 100000
        assert without_volatile(hit) == without_volatile(full)


def test_routes_with_middlewares_are_never_answered_hot(one: Site, client: httpx.Client) -> None:
    warm(client, "/wrapped/cache/mw")
    before = one.hot()
    for _ in range(3):
        response = client.get("/wrapped/cache/mw", params={"cc": "max-age=60"})
        assert response.headers["x-cache"] == "HIT" and response.headers["x-stamp"] == "1"
    assert one.hot() == before


def test_pipelined_requests_are_answered_in_order(one: Site) -> None:
    request = b"GET /cache/piped?cc=max-age%3D60 HTTP/1.1\r\nHost: localhost\r\n\r\n"
    slow = b"GET /echo/between HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with one.stack.gateway.tls_socket() as sock:
        for _ in range(2):  # stored, then published (the key is this exact Host and target)
            sock.sendall(request)
            read_response(sock)
        before = one.hot()
        # The first is answered hot; the last waits behind the second, on the full path.
        sock.sendall(request + slow + request)
        first, middle, last = (read_response(sock) for _ in range(3))
    assert one.hot() - before == 1
    assert first[0] == last[0] == middle[0] == 200
    assert first[1]["x-cache"] == last[1]["x-cache"] == ["HIT"]
    assert b"/echo/between" in middle[2]
    assert first[2] == last[2]


def test_a_client_that_does_not_read_cannot_pile_up_hot_answers(one: Site) -> None:
    """990 pipelined GETs of a 64 KiB hot entry (under keepalive_requests), and the client
    reads nothing: answers stop at the transport's high-water mark (the full path then waits
    for the drain and stops reading), instead of 62 MiB of answers in the gateway's memory.
    Then all arrive, in order."""
    request = b"GET /blob64k HTTP/1.1\r\nHost: localhost\r\n\r\n"
    count = 990
    with one.stack.gateway.tls_socket(timeout=30) as sock:
        for _ in range(2):  # stored, then published
            sock.sendall(request)
            read_response(sock)
        with RssSampler(one.stack.gateway.process.pid) as rss:
            baseline = rss.peak
            sock.sendall(request * count)  # ~45 KB: fits in the socket buffers
            settled, last = 0, -1.0
            for _ in range(50):  # until the gateway stops answering (bounded: 50 polls)
                now = one.hot()
                settled = settled + 1 if now == last else 0
                if settled == 3:
                    break
                last = now
                time.sleep(0.1)
        assert rss.peak - baseline < 24 * 1024 * 1024, f"grew {(rss.peak - baseline) >> 20} MiB"
        bodies = {read_response(sock)[2] for _ in range(count)}
    assert len(bodies) == 1 and len(bodies.pop()) == 65536


def test_with_two_workers_another_workers_invalidation_ends_hot_hits(tmp_path: Path) -> None:
    params: dict[str, Any] = {"cc": "max-age=60"}
    with site(tmp_path, workers=2) as s:
        gw = s.stack.gateway
        clients = [gw.client() for _ in range(8)]  # connections spread over both workers
        try:
            for c in clients:
                for _ in range(3):
                    assert c.get("/cache/shared", params=params).status_code == 200
            assert s.hot() > 0
            assert s.upstream.answered("/cache/shared") == 1  # one store for both workers
            with gw.client() as other:
                assert other.post("/cache/shared", params=params).status_code == 200
            served = {c.get("/cache/shared", params=params).headers["x-served"] for c in clients}
            assert served == {"3"}  # the refetch after the POST, on every connection
        finally:
            for c in clients:
                c.close()
