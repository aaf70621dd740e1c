"""Every way a proxied request can fail, and the one place that maps each to a status code.

    GatewayError                      status  body says
    ├── RequestRejected                 400    the request is malformed or ambiguous (closes)
    │   ├── MalformedRequest            400    the HTTP parser refused the bytes (closes)
    │   ├── RequestHeadTooLarge         431    head over max_header_bytes, or too many fields
    │   ├── URITooLong                  414    request line over 8 KiB (closes)
    │   ├── RequestTimeout              408    head or body not sent in time (closes)
    │   ├── MisdirectedRequest          421    Host (or SNI) is not a name this gateway serves
    │   ├── ContentTooLarge             413    body over max_body_bytes (closes)
    │   ├── LoopDetected                508    the request already passed this gateway (Via)
    │   └── NotImplementedMethod        501    CONNECT: a reverse proxy is not a tunnel
    ├── TooManyConnections              503    max_connections reached (answered, then closed)
    ├── ClientDisconnected              499    the client left (only ever in the access log)
    ├── Unauthorized                    401    basic_auth: missing or wrong credentials
    ├── TooManyRequests                 429    rate_limit, or too many failed logins
    ├── NotFound                        404    no route matches, or a static file is missing
    ├── MethodNotAllowed                405    e.g. POST to a static route
    ├── RangeNotSatisfiable             416    a Range outside a static file
    ├── TooManyTunnels                  503    the per-process WebSocket tunnel limit is reached
    └── UpstreamError                   502    the upstream failed us
        ├── UpstreamConnectError        502    connect refused / unreachable
        ├── UpstreamTLSError            502    the upstream's certificate is not trusted
        ├── UpstreamConnectTimeout      504    connect took longer than connect_timeout
        ├── UpstreamClosed              502    connection reset or closed mid-exchange
        ├── UpstreamProtocolError       502    the upstream's response is not valid HTTP
        ├── UpstreamTimeout             504    no bytes from upstream within read_timeout
        └── NoUpstreamAvailable         503    every server of the pool is DOWN

Every response the gateway makes itself is one of these, rendered by ``error_response``:
the listener's parser errors (400/431), the app's refusals and the handlers' failures alike.
Its JSON body carries the request's X-Request-ID (``request_id``) when there is one.

Upstream errors also record how far the exchange got (``request_sent``): the retry policy
reads that to decide whether another server may safely be tried (see ``gateway.retry``).
Third-party exceptions (OSError, TimeoutError, parser errors) are translated at the
boundary in ``gateway.upstream.connection`` with ``raise ... from exc``.
"""

from __future__ import annotations

import json
from email.utils import formatdate
from random import getrandbits


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


class MalformedRequest(RequestRejected):
    """The listener's HTTP parser refused the request bytes (answered before any ASGI app)."""


class RequestHeadTooLarge(RequestRejected):
    status = 431  # RFC 6585 §5


class URITooLong(RequestRejected):
    status = 414  # RFC 9110 §15.5.15


class RequestTimeout(RequestRejected):
    status = 408  # RFC 9110 §15.5.9


class LoopDetected(RequestRejected):
    status = 508  # RFC 5842 §7.2


class NotImplementedMethod(RequestRejected):
    status = 501  # RFC 9110 §15.6.2: a method the server does not support for any resource


CONNECT_REFUSED = "CONNECT is not supported: this is a reverse proxy, not a tunnel"


def parse_error(
    head_too_large: bool,
    max_header_bytes: int,
    *,
    uri_too_long: int = 0,
    too_many_fields: int = 0,
) -> RequestRejected:
    """The answer to a request the listener's parser could not take (``uri_too_long`` and
    ``too_many_fields`` carry the limit that was exceeded, 0 when it was not)."""
    if uri_too_long:
        return URITooLong(f"request target longer than {uri_too_long} bytes")
    if too_many_fields:
        return RequestHeadTooLarge(f"more than {too_many_fields} header fields")
    if head_too_large:
        return RequestHeadTooLarge(
            f"request head larger than {max_header_bytes} bytes (max_header_bytes)"
        )
    return MalformedRequest("malformed HTTP request")


class MisdirectedRequest(RequestRejected):
    status = 421
    close_connection = False


class ContentTooLarge(RequestRejected):
    status = 413


class TooManyConnections(GatewayError):
    """Answered by the listener to a connection beyond max_connections, which it then closes."""

    status = 503
    close_connection = True

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


class ClientDisconnected(GatewayError):
    """The client went away; nothing more can be sent to it."""

    status = 499  # Nginx's code for it, only ever seen in the access log


class Unauthorized(GatewayError):
    status = 401  # RFC 9110 §15.5.2: must carry a challenge

    def __init__(self, message: str, realm: str) -> None:
        super().__init__(message)
        self.realm = realm

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        # RFC 7617 §2.1: charset="UTF-8" says how the client should encode user and password.
        challenge = f'Basic realm="{self.realm}", charset="UTF-8"'
        return [(b"www-authenticate", challenge.encode())]


class TooManyRequests(GatewayError):
    status = 429  # RFC 6585 §4

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"%d" % self.retry_after)]


class NotFound(GatewayError):
    status = 404


class NoRouteMatched(NotFound):
    pass


class MethodNotAllowed(GatewayError):
    status = 405

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"allow", self.allow.encode())]


class RangeNotSatisfiable(GatewayError):
    status = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"content-range", b"bytes */%d" % self.size)]


class TooManyTunnels(GatewayError):
    status = 503

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


class UpstreamError(GatewayError):
    status = 502

    def __init__(self, message: str, *, server: str = "", request_sent: bool = False) -> None:
        super().__init__(message)
        self.server = server
        # True once any byte of the request may have reached the server.
        self.request_sent = request_sent


class UpstreamConnectError(UpstreamError):
    pass


class UpstreamTLSError(UpstreamConnectError):
    """The TLS handshake with an https:// upstream failed (untrusted certificate, wrong name)."""


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
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    421: "Misdirected Request",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    508: "Loop Detected",
}


def error_response(
    status: int,
    message: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    request_id: str = "",
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and JSON body of a response the gateway generates itself."""
    payload = {"message": message, "request_id": request_id} if request_id else {"message": message}
    body = json.dumps(payload).encode() + b"\n"
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"date", formatdate(usegmt=True).encode()),
        (b"cache-control", b"no-store"),
    ]
    if extra_headers:
        headers.extend(extra_headers)
    return headers, body


def raw_error_response(exc: GatewayError) -> bytes:
    """A whole HTTP/1.1 error response as bytes, for answers written before any ASGI app runs
    (the listener's parser errors); the connection is closed after it.  It has its own
    X-Request-ID, like every answer of the gateway, for a client reporting it."""
    request_id = getrandbits(128).to_bytes(16).hex()
    headers, body = error_response(exc.status, exc.message, exc.response_headers(), request_id)
    headers.append((b"x-request-id", request_id.encode()))
    headers.append((b"connection", b"close"))
    reason = REASONS.get(exc.status, "Error").encode()
    head = b"".join(b"%s: %s\r\n" % pair for pair in headers)
    return b"HTTP/1.1 %d %s\r\n%s\r\n%s" % (exc.status, reason, head, body)
