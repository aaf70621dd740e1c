"""``Upstream``: the pool's balancer skips DOWN servers, 503 when none is left, and the state
snapshot the dashboard will read."""

from __future__ import annotations

import pytest

from gateway.config import UpstreamServer, UpstreamSettings
from gateway.errors import NoUpstreamAvailable
from gateway.health import FailureKind
from gateway.upstream.group import Upstream

A, B = UpstreamServer("127.0.0.1", 9001), UpstreamServer("127.0.0.1", 9002)


def pool() -> Upstream:
    return Upstream(UpstreamSettings(name="app", servers=(A, B), health_interval=3.0))


def test_a_refused_connect_takes_the_server_out_of_rotation() -> None:
    upstream = pool()
    upstream.report_failure(A, FailureKind.CONNECT, "connection refused")
    assert {upstream.choose() for _ in range(4)} == {B}


def test_all_down_still_tries_each_server_then_503_with_retry_after() -> None:
    """Issue 13 (Nginx's "quick recovery"): with every server DOWN a request still tries
    each of them once; only when all were tried is it 503, Retry-After from the interval."""
    upstream = pool()
    for server in (A, B):
        upstream.report_failure(server, FailureKind.RESET, "reset")
    first = upstream.choose()
    second = upstream.choose([first])
    assert {first, second} == {A, B}
    with pytest.raises(NoUpstreamAvailable) as caught:
        upstream.choose([A, B])
    assert "all 2 servers are DOWN" in caught.value.message
    assert caught.value.response_headers() == [(b"retry-after", b"3")]


def test_a_down_server_that_answers_is_up_at_once() -> None:
    upstream = pool()
    upstream.report_failure(A, FailureKind.CONNECT, "refused")
    assert not upstream.is_up(A)
    upstream.report_success(A)
    assert upstream.is_up(A)
    assert {upstream.choose() for _ in range(4)} == {A, B}


def test_when_the_up_server_fails_a_down_one_is_tried_next() -> None:
    """A rolling restart: B is back but still marked DOWN when A goes down; the retry of
    A's failed request goes to B instead of ending in 503."""
    upstream = pool()
    upstream.report_failure(B, FailureKind.CONNECT, "refused")
    assert upstream.choose() == A
    assert upstream.choose([A]) == B


def test_a_lone_server_is_never_marked_down_by_traffic() -> None:
    """Nginx ignores max_fails for a pool's only server: one reset must not 503 everyone."""
    upstream = Upstream(UpstreamSettings(name="one", servers=(A,)))
    for kind in FailureKind:
        for _ in range(5):
            upstream.report_failure(A, kind, "boom")
    assert upstream.is_up(A)
    assert upstream.choose() == A
    assert upstream.health[A].last_error == "boom"


def test_every_server_tried_is_not_the_same_as_all_down() -> None:
    upstream = pool()
    with pytest.raises(NoUpstreamAvailable) as caught:
        upstream.choose(exclude=[A, B])
    assert "every available server failed" in caught.value.message


def test_snapshot_reports_every_server_state() -> None:
    upstream = pool()
    upstream.report_failure(B, FailureKind.CONNECT, "connection refused")
    snapshot = upstream.snapshot()
    assert snapshot["upstream"] == "app"
    states = {s["server"]: (s["status"], s["last_error"]) for s in snapshot["servers"]}
    assert states == {
        "127.0.0.1:9001": ("UP", None),
        "127.0.0.1:9002": ("DOWN", "connection refused"),
    }
