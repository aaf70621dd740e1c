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


def test_all_down_is_503_with_retry_after_from_the_check_interval() -> None:
    upstream = pool()
    for server in (A, B):
        upstream.report_failure(server, FailureKind.RESET, "reset")
    with pytest.raises(NoUpstreamAvailable) as caught:
        upstream.choose()
    assert "all 2 servers are DOWN" in caught.value.message
    assert caught.value.response_headers() == [(b"retry-after", b"3")]


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
