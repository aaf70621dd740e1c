"""The listener's client limits as pure rules (gateway.client_limits), the glibc mmap threshold
fix and the frozen start-up heap (gateway.memory).  HTTP/1.0 framing: test_http1_cycle.py."""

from __future__ import annotations

import gc

import pytest

from gateway.client_limits import ClientLimits, body_deadline, is_last_request
from gateway.config import GatewaySettings
from gateway.memory import fix_mmap_threshold, freeze_startup_heap


def test_limits_come_from_the_gateway_settings() -> None:
    settings = GatewaySettings(
        header_timeout=2.5, body_timeout=4.0, max_connections=7, keepalive_requests=9
    )
    limits = ClientLimits.from_settings(settings)
    assert (limits.header_timeout, limits.body_timeout) == (2.5, 4.0)
    assert (limits.max_connections, limits.keepalive_requests) == (7, 9)
    # Nginx's bounds for what a client may send in one head.
    assert (limits.max_request_line, limits.max_header_fields) == (8192, 100)


def test_defaults_match_the_contract() -> None:
    limits = ClientLimits.from_settings(GatewaySettings())
    assert (limits.header_timeout, limits.body_timeout, limits.max_connections) == (
        10.0,
        30.0,
        4096,
    )
    assert limits.keepalive_requests == 1000  # Nginx's keepalive_requests


@pytest.mark.parametrize(
    ("last_read", "now", "paused", "expected"),
    [
        (100.0, 101.0, False, 130.0),  # counts from the last body bytes
        (100.0, 140.0, False, 130.0),  # already past: the caller times out
        (100.0, 140.0, True, 170.0),  # our own back-pressure: the client could not send
    ],
)
def test_body_deadline(last_read: float, now: float, paused: bool, expected: float) -> None:
    assert body_deadline(last_read, 30.0, now, paused) == expected


def test_the_last_request_of_a_connection() -> None:
    limits = ClientLimits(keepalive_requests=3)
    assert [is_last_request(n, limits) for n in (1, 2, 3, 4)] == [False, False, True, True]


def test_the_mmap_threshold_can_be_pinned_on_glibc() -> None:
    assert fix_mmap_threshold() is True  # the project runs on Debian (glibc)


def test_the_startup_heap_leaves_the_collectors_way() -> None:
    kept = [[object()] for _ in range(1000)]  # tracked containers alive at "start-up"
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_count()[0] < 100  # the young generation starts empty again
    finally:
        gc.unfreeze()  # the rest of the test session collects as before
