"""Server health: active-check thresholds, passive rules and the max_fails window (time is
passed in, so no clock and no server is needed), and one check round on a mock transport."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.config import UpstreamServer, UpstreamSettings
from gateway.health import (
    FailureKind,
    HealthChecker,
    ServerHealth,
    ServerStatus,
    new_server_health,
    status_is_healthy,
)

UP, DOWN = ServerStatus.UP, ServerStatus.DOWN
SERVER = UpstreamServer("127.0.0.1", 9001)


def health(**kw: Any) -> ServerHealth:
    return ServerHealth(upstream="app", server=SERVER, **kw)


def test_servers_start_up() -> None:
    """A fresh gateway never answers 503 before its first check."""
    assert health().is_up


def test_unhealthy_threshold_consecutive_failures_mark_down() -> None:
    h = health(unhealthy_threshold=3)
    assert [h.record_check(False, "boom", t) for t in (1, 2)] == [None, None]
    assert h.is_up
    assert h.record_check(False, "boom", 3) is DOWN  # the transition is reported once
    assert h.record_check(False, "boom", 4) is None
    assert (h.status, h.last_error, h.last_change, h.last_checked) == (DOWN, "boom", 3, 4)


def test_a_success_resets_the_failure_count() -> None:
    h = health(unhealthy_threshold=2)
    for t, ok in enumerate([False, True, False, True, False]):
        assert h.record_check(ok, "x", t) is None
    assert h.is_up


def test_healthy_threshold_consecutive_successes_mark_up() -> None:
    h = health(unhealthy_threshold=1, healthy_threshold=3)
    assert h.record_check(False, "down", 0) is DOWN
    assert h.record_check(True, "ok", 1) is None
    assert h.record_check(False, "down", 2) is None  # the streak starts over
    assert [h.record_check(True, "ok", t) for t in (3, 4, 5)] == [None, None, UP]
    assert h.is_up


@pytest.mark.parametrize("kind", [FailureKind.CONNECT, FailureKind.RESET])
def test_refused_or_reset_marks_down_at_once(kind: FailureKind) -> None:
    h = health(max_fails=3)
    assert h.record_failure(kind, "refused", 1.0) is DOWN
    assert h.record_failure(kind, "refused", 2.0) is None  # already DOWN: no new transition


def test_max_fails_timeouts_within_the_window_mark_down() -> None:
    h = health(max_fails=3, fail_window=10.0)
    assert h.record_failure(FailureKind.TIMEOUT, "t", 0.0) is None
    assert h.record_failure(FailureKind.TIMEOUT, "t", 5.0) is None
    assert h.record_failure(FailureKind.TIMEOUT, "t", 10.0) is DOWN  # window is inclusive


def test_failures_older_than_the_window_do_not_count() -> None:
    h = health(max_fails=3, fail_window=10.0)
    for t in (0.0, 5.0, 10.5, 15.5):
        assert h.record_failure(FailureKind.TIMEOUT, "t", t) is None  # never 3 within 10 s
    assert h.record_failure(FailureKind.TIMEOUT, "t", 16.0) is DOWN  # 10.5, 15.5, 16.0


@pytest.mark.parametrize(("passive_5xx", "expected"), [(False, UP), (True, DOWN)])
def test_5xx_counts_only_when_enabled(passive_5xx: bool, expected: ServerStatus) -> None:
    h = health(max_fails=2, passive_5xx=passive_5xx)
    for t in range(5):
        h.record_failure(FailureKind.STATUS_5XX, "503", float(t))
    assert h.status is expected


def test_max_fails_zero_disables_counting_but_not_refusals() -> None:
    h = health(max_fails=0, passive_5xx=True)
    for t in range(10):
        assert h.record_failure(FailureKind.TIMEOUT, "t", float(t)) is None
        assert h.record_failure(FailureKind.STATUS_5XX, "500", float(t)) is None
    assert h.record_failure(FailureKind.CONNECT, "refused", 11.0) is DOWN


def test_recovery_clears_old_failures() -> None:
    """After DOWN -> UP, failures from before do not count towards the next max_fails."""
    h = health(max_fails=2, fail_window=100.0, healthy_threshold=1)
    h.record_failure(FailureKind.TIMEOUT, "t", 0.0)
    assert h.record_failure(FailureKind.TIMEOUT, "t", 1.0) is DOWN
    assert h.record_check(True, "ok", 2.0) is UP
    assert h.record_failure(FailureKind.TIMEOUT, "t", 3.0) is None
    assert h.is_up


def test_new_server_health_copies_the_pool_settings() -> None:
    settings = UpstreamSettings(
        "app",
        (SERVER,),
        unhealthy_threshold=4,
        healthy_threshold=2,
        max_fails=7,
        fail_window=3.0,
        passive_5xx=True,
    )
    h = new_server_health(settings, SERVER)
    assert (h.upstream, h.server, h.unhealthy_threshold, h.healthy_threshold) == (
        "app",
        SERVER,
        4,
        2,
    )
    assert (h.max_fails, h.fail_window, h.passive_5xx, h.status) == (7, 3.0, True, UP)
    assert h.snapshot()["server"] == "127.0.0.1:9001"
    assert h.snapshot()["status"] == "UP"


@pytest.mark.parametrize(
    ("status", "expected", "healthy"),
    [
        (200, None, True),
        (204, None, True),
        (301, None, True),
        (399, None, True),
        (404, None, False),
        (500, None, False),
        (503, None, False),
        (204, (200,), False),
        (503, (200, 503), True),
    ],
)
def test_status_is_healthy(status: int, expected: tuple[int, ...] | None, healthy: bool) -> None:
    assert status_is_healthy(status, expected) is healthy


def run_check(handler: Callable[[httpx.Request], httpx.Response]) -> ServerHealth:
    """One active check of SERVER against ``handler``; unhealthy_threshold 1 so one failed
    check shows as DOWN."""
    settings = UpstreamSettings("app", (SERVER,), health_path="/healthz", unhealthy_threshold=1)
    states = {SERVER: new_server_health(settings, SERVER)}
    checker = HealthChecker(settings, states)

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            checker._client = client  # instead of start(): the same checks, no sockets
            await checker.check_all()

    asyncio.run(main())
    return states[SERVER]


def test_check_requests_the_health_path() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200)

    h = run_check(handler)
    assert seen == ["http://127.0.0.1:9001/healthz"]
    assert h.is_up and h.consecutive_successes == 1 and h.last_checked is not None


def test_check_failing_status_marks_down() -> None:
    h = run_check(lambda request: httpx.Response(503))
    assert h.status is DOWN and h.last_error == "health check returned 503"


@pytest.mark.parametrize(
    ("exc", "detail"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "connection refused"),
        (httpx.ReadTimeout("timed out"), "timed out"),
        (httpx.RemoteProtocolError("bad"), "health check failed: RemoteProtocolError"),
    ],
)
def test_check_transport_errors_mark_down(exc: Exception, detail: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    h = run_check(handler)
    assert h.status is DOWN
    assert detail in (h.last_error or "")


# -- issue 13: one bad exchange must not take the service down ---------------------------------


@pytest.mark.parametrize("kind", list(FailureKind))
def test_a_lone_server_ignores_passive_failures(kind: FailureKind) -> None:
    h = health(passive_checks=False, max_fails=1, passive_5xx=True)
    for t in range(10):
        assert h.record_failure(kind, "boom", float(t)) is None
    assert h.is_up and h.last_error == "boom"
    assert h.record_check(False, "check failed", 11.0) is None
    assert h.record_check(False, "check failed", 12.0) is DOWN  # active checks still count


def test_new_server_health_turns_passive_checks_off_for_a_lone_server() -> None:
    two = UpstreamSettings("app", (SERVER, UpstreamServer("127.0.0.1", 9002)))
    assert new_server_health(two, SERVER).passive_checks
    assert not new_server_health(UpstreamSettings("app", (SERVER,)), SERVER).passive_checks


def test_a_down_server_that_answers_is_up_at_once() -> None:
    h = health(healthy_threshold=3)
    assert h.record_failure(FailureKind.CONNECT, "refused", 1.0) is DOWN
    assert h.record_success(2.0) is UP  # no waiting for healthy_threshold checks
    assert h.record_success(3.0) is None
    assert h.is_up and h.last_change == 2.0
