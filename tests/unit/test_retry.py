"""The retry table: another server is tried only when the upstream cannot have acted on the
request (or, for idempotent methods, when the connection broke before any response byte)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import (
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateway.retry import may_retry


def retry(
    error: UpstreamError,
    method: str = "GET",
    *,
    response_started: bool = False,
    body_sent: bool = False,
    attempts_left: int = 1,
) -> bool:
    return may_retry(
        error,
        method=method,
        response_started=response_started,
        body_sent=body_sent,
        attempts_left=attempts_left,
    )


NOT_SENT = {
    "connect-refused": UpstreamConnectError("refused"),
    "connect-timeout": UpstreamConnectTimeout("slow"),
    "closed-before-sending": UpstreamClosed("closed", request_sent=False),
}
SENT = {
    "closed": UpstreamClosed("reset", request_sent=True),
    "timeout": UpstreamTimeout("stalled", request_sent=True),
    "protocol-error": UpstreamProtocolError("garbage", request_sent=True),
}
METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]

# (error, method) -> retried?  Once the request went out, only an idempotent request whose
# connection broke is repeated: a timeout or a bad response may mean the server acted.
TABLE = [
    *((name, m, True) for name in NOT_SENT for m in METHODS),
    *(("closed", m, m in ("GET", "HEAD", "OPTIONS")) for m in METHODS),
    *(("timeout", m, False) for m in METHODS),
    *(("protocol-error", m, False) for m in METHODS),
]


@pytest.mark.parametrize(("error", "method", "expected"), TABLE)
def test_retry_table(error: str, method: str, expected: bool) -> None:
    exc = {**NOT_SENT, **SENT}[error]
    assert retry(exc, method) is expected


@pytest.mark.parametrize("error", list(NOT_SENT.values()) + list(SENT.values()))
@pytest.mark.parametrize(
    "stop",
    [
        {"attempts_left": 0},
        {"response_started": True},
        {"body_sent": True},
    ],
    ids=["no-attempts-left", "response-started", "body-sent"],
)
def test_never_retried(error: UpstreamError, stop: dict[str, Any]) -> None:
    """No attempts left, a response byte already sent to the client, or body bytes that
    cannot be replayed: never retried, whatever the error."""
    assert retry(error, "GET", **stop) is False
