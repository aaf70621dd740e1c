"""Every way a proxied request can fail, and the one place that maps each to a status code.

    GatewayError                      status  body says
    ├── RequestRejected                 400    the request is malformed or ambiguous (closes)
    │   ├── MisdirectedRequest          421    Host is not a name this gateway serves
    │   └── ContentTooLarge             413    body over max_body_bytes (closes)
    ├── NoRouteMatched                  404    no [[routes]] path_prefix matches
    └── UpstreamError                   502    the upstream failed us
        ├── UpstreamConnectError        502    connect refused / unreachable
        ├── UpstreamConnectTimeout      504    connect took longer than connect_timeout
        ├── UpstreamClosed              502    connection reset or closed mid-exchange
        ├── UpstreamProtocolError       502    the upstream's response is not valid HTTP
        ├── UpstreamTimeout             504    no bytes from upstream within read_timeout
        └── NoUpstreamAvailable         503    every server of the pool is DOWN

Upstream errors also record how far the exchange got (``request_sent``): the retry policy
reads that to decide whether another server may safely be tried (see ``gateway.retry``).
Third-party exceptions (OSError, TimeoutError, parser errors) are translated at the
boundary in ``gateway.upstream.connection`` with ``raise ... from exc``.
"""

from __future__ import annotations

import json
from email.utils import formatdate


class GatewayError(Exception):
    status = 500
    close_connection = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return []


class RequestRejected(GatewayError):
    """Refused before anything is forwarded; the client connection is closed after the answer,
    because after a framing problem we cannot know where the next request would start."""

    status = 400
    close_connection = True


class MisdirectedRequest(RequestRejected):
    status = 421
    close_connection = False


class ContentTooLarge(RequestRejected):
    status = 413


class NoRouteMatched(GatewayError):
    status = 404


class UpstreamError(GatewayError):
    status = 502

    def __init__(self, message: str, *, server: str = "", request_sent: bool = False) -> None:
        super().__init__(message)
        self.server = server
        # True once any byte of the request may have reached the server.
        self.request_sent = request_sent


class UpstreamConnectError(UpstreamError):
    pass


class UpstreamConnectTimeout(UpstreamError):
    status = 504


class UpstreamClosed(UpstreamError):
    pass


class UpstreamProtocolError(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    status = 504


class NoUpstreamAvailable(UpstreamError):
    status = 503

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(self.retry_after).encode())]


REASONS = {
    400: "Bad Request",
    404: "Not Found",
    413: "Content Too Large",
    421: "Misdirected Request",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def error_response(
    status: int, message: str, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and JSON body of a response the gateway generates itself."""
    body = json.dumps({"message": message}).encode() + b"\n"
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"date", formatdate(usegmt=True).encode()),
        (b"cache-control", b"no-store"),
    ]
    if extra_headers:
        headers.extend(extra_headers)
    return headers, body
