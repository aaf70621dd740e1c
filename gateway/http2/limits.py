"""The bounds one HTTP/2 connection lives within, and the rapid-reset budget.

Pure state, the clock injected, so the policy is unit-tested without a connection.

Rapid reset (CVE-2023-44487): a client opens a stream and cancels it at once, over and over.
Each cancelled stream frees its slot under SETTINGS_MAX_CONCURRENT_STREAMS, so that setting
alone bounds nothing, while a server that started work for each one keeps doing it.  Three
defences, as in Nginx, Go and HAProxy's fixes:

1. a stream opened and reset within the same read never starts the app (costs nothing);
2. a reset stream whose app is still running keeps counting against the concurrency limit
   until it has finished (Go's fix), so resets cannot stack up unbounded work;
3. the ``ResetBudget`` below: resets of unfinished streams drain a token bucket; a client
   that empties it gets GOAWAY ENHANCE_YOUR_CALM and the connection is closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# A client must finish a request head within this when the settings name none (the
# HTTP/1.1 listener's header timeout, once configured, is passed in instead).
DEFAULT_HEADER_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Http2Limits:
    """Per-connection limits of the h2 listener (see the README's HTTP/2 section)."""

    max_header_bytes: int = 64 * 1024  # SETTINGS_MAX_HEADER_LIST_SIZE and the HPACK bound
    max_concurrent_streams: int = 100
    # Flow control: what one stream, and all of a connection's streams together, may send
    # before the app has read it.  It bounds the request-body memory of a connection.
    stream_window: int = 256 * 1024
    connection_window: int = 2 * 1024 * 1024
    # Closed with GOAWAY after this long without an open stream (the keep-alive timeout).
    idle_timeout: float = 15.0
    # A header block (or the connection preface) must be complete within this.
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    # Longest gap in a request body while the gateway waits for it: then 408 on the stream.
    body_timeout: float = 30.0
    # Resets of unfinished streams: a burst of this many, refilled at this rate per second.
    reset_burst: int = 200
    reset_rate: float = 100.0


class ResetBudget:
    """A token bucket for streams the client cancels before their response is complete."""

    __slots__ = ("burst", "rate", "clock", "tokens", "stamp")

    def __init__(
        self, burst: int, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.rate = rate
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()

    def spend(self) -> bool:
        """Count one reset; False once the client has used up its budget."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        return self.tokens >= 0.0
