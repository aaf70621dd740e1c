"""How much a client connection may ask of the HTTP/1.1 listener, and when it has had enough.

These are the bounds Nginx puts on a client (its names in brackets), as plain values and
pure decisions so they are unit-tested without a socket; ``gateway.listener`` applies them:

- ``header_timeout`` [client_header_timeout]: the request head must be complete this long
  after the connection was made, or after the first byte of a later request arrived.  A
  slowloris client dripping one header line every few seconds is closed when it runs out.
- ``body_timeout`` [client_body_timeout]: the longest pause between two reads of a request
  body.  Time while the gateway itself stopped reading (back-pressure) does not count.
- ``max_connections`` [worker_connections]: open connections per process; one more is
  answered 503 and closed at once, so a flood costs a handshake, never a crash.
- ``keepalive_requests`` [keepalive_requests, 1,000]: requests per connection; the last
  response says ``Connection: close``.
- ``max_request_line`` [large_client_header_buffers, 8 KiB]: a longer request target is 414.
- ``max_header_fields``: more fields than this is 431 (Apache's LimitRequestFields, 100).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gateway.config import GatewaySettings


@dataclass(frozen=True, slots=True)
class ClientLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 4096
    keepalive_requests: int = 1000
    max_request_line: int = 8 * 1024
    max_header_fields: int = 100

    @classmethod
    def from_settings(cls, gateway: GatewaySettings) -> ClientLimits:
        return cls(
            header_timeout=gateway.header_timeout,
            body_timeout=gateway.body_timeout,
            max_connections=gateway.max_connections,
            keepalive_requests=gateway.keepalive_requests,
        )


class Phase(Enum):
    """What the connection's one timer is waiting for."""

    IDLE = "idle"  # a kept-alive connection's next request (keepalive_timeout)
    HEAD = "head"  # the rest of a request head (or its first byte, on a new connection)
    BODY = "body"  # the next bytes of a request body


def body_deadline(last_read: float, timeout: float, now: float, reading_paused: bool) -> float:
    """When a request body that last delivered bytes at ``last_read`` times out.

    While the gateway has paused reading (its buffer is full because the upstream is slow),
    the client cannot send: the clock restarts from ``now`` instead of running out on it.
    """
    return now + timeout if reading_paused else last_read + timeout


def is_last_request(requests: int, limits: ClientLimits) -> bool:
    """Whether the ``requests``-th request of a connection must close it after its response."""
    return requests >= limits.keepalive_requests
