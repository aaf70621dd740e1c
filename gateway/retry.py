"""When a failed upstream attempt may be repeated on another server.

The rule is the one every careful proxy converges on: retry only when the upstream cannot have
acted on the request.  That is certain when nothing was sent (connect refused or timed out, or
a pooled connection found closed before the first byte); for idempotent methods (RFC 9110
§9.2.2) it is also acceptable when the connection broke before any response byte reached the
client (small bodies are read whole before their head is relayed, so a worker dying
mid-response is still invisible to the client).
A POST is never sent twice once any byte of it has gone out, and nothing is retried once the
client has seen a response byte or once body bytes we can no longer replay have been sent.
"""

from __future__ import annotations

from gateway.errors import (
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
)

IDEMPOTENT_RETRYABLE = frozenset({"GET", "HEAD", "OPTIONS"})


def may_retry(
    error: UpstreamError,
    *,
    method: str,
    response_started: bool,
    body_sent: bool,
    attempts_left: int,
) -> bool:
    if attempts_left <= 0 or response_started or body_sent:
        return False
    if isinstance(error, UpstreamConnectError | UpstreamConnectTimeout):
        return True
    if not error.request_sent:
        return True
    return method in IDEMPOTENT_RETRYABLE and isinstance(error, UpstreamClosed)
