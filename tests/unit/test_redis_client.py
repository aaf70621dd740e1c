"""The outage switch shared by the cache's and rate_limit's Redis clients: the back-off and
the once-only log lines, with an injected clock."""

from __future__ import annotations

import logging

import pytest

from gateway.redis_client import Outage

log = logging.getLogger("test.redis_client")


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_a_failure_backs_off_and_the_outage_and_recovery_are_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = Outage(log, lambda error: f"down: {error}", "back", retry_after=1.0, clock=clock)
    assert outage.available()
    with caplog.at_level(logging.WARNING, logger="test.redis_client"):
        outage.failed(ConnectionRefusedError(111, "Connection refused"))
        assert not outage.available()
        clock.now += 0.99
        assert not outage.available()
        clock.now += 0.01
        assert outage.available()
        outage.failed(TimeoutError())  # the retry failed too: another back-off, no new line
        assert not outage.available()
        clock.now += 1.0
        outage.answered()
        outage.answered()
        assert outage.available()
    assert [r.getMessage() for r in caplog.records] == [
        "down: [Errno 111] Connection refused",
        "back",
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="test.redis_client"):
        outage.failed(TimeoutError())  # a new outage is a new line; an empty message, the type
    assert [r.getMessage() for r in caplog.records] == ["down: TimeoutError"]
