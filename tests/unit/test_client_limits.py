"""The listener's client limits as pure rules (gateway.client_limits), the HTTP/1.0 framing
wrapper on a fake response cycle, the glibc mmap threshold fix and the frozen start-up heap
(gateway.memory)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from gateway.client_limits import ClientLimits, body_deadline, is_last_request
from gateway.config import GatewaySettings
from gateway.listener import http10_sender
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


class FakeCycle:
    """What http10_sender touches on uvicorn's RequestResponseCycle."""

    def __init__(self, method: str = "GET") -> None:
        self.scope: dict[str, Any] = {"method": method}
        self.keep_alive = True
        self.chunked_encoding: bool | None = None
        self.expected_content_length = 0
        self.sent: list[tuple[dict[str, Any], bool | None, int]] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append((message, self.chunked_encoding, self.expected_content_length))


def run_messages(cycle: FakeCycle, *messages: dict[str, Any]) -> None:
    send = http10_sender(cycle)

    async def go() -> None:
        for message in messages:
            await send(message)

    asyncio.run(go())


def test_http_1_0_response_without_length_is_unframed_never_chunked() -> None:
    cycle = FakeCycle()
    run_messages(
        cycle,
        {"type": "http.response.start", "status": 200, "headers": []},
        {"type": "http.response.body", "body": b"abc", "more_body": True},
        {"type": "http.response.body", "body": b"de"},
    )
    assert cycle.keep_alive is False  # the connection's end delimits the body
    start, body1, last = cycle.sent
    assert start[1] is False  # uvicorn will not add chunked framing
    assert body1[2] > 1 << 40  # any length may follow ...
    assert last[2] == 2  # ... and the last message ends it exactly


@pytest.mark.parametrize(
    ("method", "status", "headers"),
    [
        ("GET", 200, [(b"content-length", b"3")]),
        ("HEAD", 200, []),
        ("GET", 204, []),
        ("GET", 304, []),
    ],
)
def test_http_1_0_framed_or_bodiless_responses_are_left_alone(
    method: str, status: int, headers: list[tuple[bytes, bytes]]
) -> None:
    cycle = FakeCycle(method)
    run_messages(cycle, {"type": "http.response.start", "status": status, "headers": headers})
    assert cycle.keep_alive is True and cycle.chunked_encoding is None


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
