"""Bodies flow through the gateway as streams: server-sent events arrive as they are sent,
large transfers run in bounded memory, and oversized request bodies are refused."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e.harness import (
    SHARED_MAX_BODY,
    RssSampler,
    Stack,
    is_closed,
    one_pool,
    read_response,
    stack,
)

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
LARGE = 256 * MiB
RSS_GROWTH_LIMIT = 64 * MiB
LARGE_TRANSFER_SECONDS = 30.0


def test_server_sent_events_are_not_buffered(shared: Stack, client: httpx.Client) -> None:
    """The first event reaches the client while the upstream is still holding the response
    open (it only finishes once released), then the rest follows and the stream ends."""
    upstream = shared.upstreams["c"]  # the only server of the /solo pool
    with client.stream("GET", "/solo/sse", timeout=5) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == "data: first"
        with httpx.Client(trust_env=False, timeout=5) as direct:
            direct.post(f"{upstream.url}/sse/release").raise_for_status()
        rest = list(lines)
    assert [line for line in rest if line] == ["data: second"]


def test_body_at_the_limit_is_accepted(client: httpx.Client) -> None:
    """max_body_bytes is inclusive: a body of exactly that size is forwarded."""
    echo = client.post("/echo", content=b"x" * SHARED_MAX_BODY).json()
    assert echo["body_bytes"] == SHARED_MAX_BODY


def test_content_length_over_the_limit_is_refused_before_forwarding(shared: Stack) -> None:
    """Content-Length above max_body_bytes: 413 right after the head (the body is never
    sent), and the upstream never sees the request."""
    path = f"/echo/too-large-{uuid.uuid4().hex}"
    with shared.gateway.tls_socket() as tls:
        tls.sendall(
            b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n"
            % (path.encode(), SHARED_MAX_BODY + 1)
        )
        status, _, _ = read_response(tls)
        assert is_closed(tls)
    assert status == 413
    assert all(u.seen(path) == 0 for u in shared.upstreams.values())


def test_chunked_body_growing_past_the_limit_is_stopped(client: httpx.Client) -> None:
    """A chunked upload that passes max_body_bytes gets 413 or has its connection cut; either
    way the gateway keeps serving."""

    def body() -> Iterator[bytes]:
        for _ in range(4 * SHARED_MAX_BODY // (64 * 1024)):
            yield b"y" * (64 * 1024)

    try:
        status = client.post("/upload", content=body()).status_code
    except httpx.TransportError:
        status = None  # the gateway closed the connection while we were still sending
    assert status in (413, None)
    assert client.get("/echo").status_code == 200


def test_client_leaving_stops_the_upstream_response(tmp_path: Path) -> None:
    """A client that closes the connection mid-response makes the gateway drop the upstream
    exchange too, instead of reading a live feed forever for nobody."""

    build = one_pool(gateway={"graceful_timeout": 1.0})

    with stack(tmp_path, ["feed"], build) as s, s.gateway.client() as client:
        upstream = s.upstreams["feed"]
        with client.stream("GET", "/forever") as response:
            chunks = response.iter_raw()
            received = 0
            while received <= 256 * 1024:
                received += len(next(chunks))
            assert upstream.stats()["inflight"] == 1
        # Leaving the block closed the connection mid-response.
        deadline = time.monotonic() + 3
        while upstream.stats()["inflight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert upstream.stats()["inflight"] == 0, "the upstream is still streaming"


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One upstream behind a gateway that accepts 512 MiB bodies."""

    build = one_pool(gateway={"max_body_bytes": 512 * MiB, "access_log": False})

    with stack(tmp_path_factory.mktemp("large"), ["big"], build) as s:
        yield s


@pytest.fixture
def large_client(large: Stack) -> Iterator[httpx.Client]:
    with large.gateway.client(timeout=10) as client:
        client.get("/echo").raise_for_status()  # warm up before the memory baseline
        yield client


@pytest.mark.slow
def test_large_download_streams_in_bounded_memory(large: Stack, large_client: httpx.Client) -> None:
    """256 MiB download: every byte arrives and the gateway's RSS grows by < 64 MiB."""
    started = time.monotonic()
    received = 0
    with RssSampler(large.gateway.process.pid) as rss:
        baseline = rss.peak
        with large_client.stream("GET", f"/bytes?n={LARGE}") as response:
            assert response.status_code == 200
            for chunk in response.iter_raw():
                received += len(chunk)
                assert time.monotonic() - started < LARGE_TRANSFER_SECONDS
    assert received == LARGE
    assert rss.peak - baseline < RSS_GROWTH_LIMIT, f"RSS grew {(rss.peak - baseline) / MiB:.0f} MiB"


@pytest.mark.slow
def test_large_upload_streams_in_bounded_memory(large: Stack, large_client: httpx.Client) -> None:
    """256 MiB chunked upload: the upstream counts every byte and the gateway's RSS grows by
    < 64 MiB."""
    started = time.monotonic()

    def body() -> Iterator[bytes]:
        chunk = b"u" * MiB
        for _ in range(LARGE // MiB):
            assert time.monotonic() - started < LARGE_TRANSFER_SECONDS
            yield chunk

    with RssSampler(large.gateway.process.pid) as rss:
        baseline = rss.peak
        response = large_client.post("/upload", content=body(), timeout=LARGE_TRANSFER_SECONDS)
    assert response.status_code == 200
    assert response.json()["received"] == LARGE
    assert rss.peak - baseline < RSS_GROWTH_LIMIT, f"RSS grew {(rss.peak - baseline) / MiB:.0f} MiB"
