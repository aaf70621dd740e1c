"""Redirects: the plain-HTTP listener (every request to the same URL over HTTPS) and the
``redirect = "URL"`` route handler (every request to that URL plus its path and query).

On the listener the Host is validated first (``validation.check_request``): a Location built
from an unchecked Host would let anyone make us redirect to a host of their choosing.
"""

from __future__ import annotations

from typing import Any

from gateway.access_log import AccessLog, Exchange
from gateway.errors import GatewayError, error_response
from gateway.headers import Headers
from gateway.request import Request
from gateway.validation import HostPolicy, check_request

REDIRECT_BODY = b"Redirecting to HTTPS\n"


def https_location(hostname: str, https_port: int, raw_path: bytes, query: bytes) -> bytes:
    """``https://host[:port]/path?query``, the port left out only when it is 443."""
    host = f"[{hostname}]" if ":" in hostname else hostname
    authority = host if https_port == 443 else f"{host}:{https_port}"
    target = raw_path + b"?" + query if query else raw_path
    return b"https://" + authority.encode("ascii") + target


def redirect_response(status: int, location: bytes) -> tuple[Headers, bytes]:
    return [
        (b"location", location),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(REDIRECT_BODY)),
    ], REDIRECT_BODY


class RedirectHandler:
    """A ``redirect = "URL"`` route: ``status`` to URL + the request's path (minus the prefix
    with ``strip_prefix``) and query, like Caddy's ``redir`` or Nginx's ``return 308``."""

    def __init__(self, url: str, status: int) -> None:
        self.base = url.encode("ascii")
        self.status = status

    async def __call__(self, request: Request) -> None:
        scope = request.scope
        location = self.base + request.route.upstream_target(
            scope["raw_path"], scope["query_string"]
        )
        headers, body = redirect_response(self.status, location)
        await request.send(
            {"type": "http.response.start", "status": self.status, "headers": headers}
        )
        await request.send({"type": "http.response.body", "body": body})


class HTTPSRedirectApp:
    """The ASGI app of the plain-HTTP listener."""

    def __init__(
        self,
        hostnames: tuple[str, ...],
        https_port: int,
        status: int,
        access_log: bool | AccessLog,
    ) -> None:
        self.hosts = HostPolicy.from_hostnames(hostnames)
        self.https_port = https_port
        self.status = status
        # The HTTPS app's own, when given: both listeners write one file.
        self.access_log = (
            access_log if isinstance(access_log, AccessLog) else AccessLog(enabled=access_log)
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        exchange = Exchange(scope)
        try:
            facts = check_request(scope, self.hosts, routed=False)  # nothing routed here
        except GatewayError as exc:
            # A foreign Host gets 400 here, not 421: nothing on this port serves content.
            status = 400
            headers, body = error_response(status, exc.message)
            headers.append((b"connection", b"close"))
            exchange.status = status
        else:
            status = self.status
            location = https_location(
                facts.hostname, self.https_port, scope["raw_path"], scope["query_string"]
            )
            headers, body = redirect_response(status, location)
            exchange.status = status
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        exchange.bytes_sent = len(body)
        self.access_log.write(exchange)
