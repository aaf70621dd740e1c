"""Header rewriting in both directions: hop-by-hop removal and the X-Forwarded-* family.

Headers are ASGI-style lists of ``(lowercase name, value)`` byte pairs.  The functions are pure
and run once per request on the hot path, so they make one pass and avoid re-lowercasing.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.access_log import Exchange

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1: connection-specific fields a proxy must not forward.  Framing headers are
# also dropped: each side of the proxy sets its own (Content-Length or chunked), exactly one.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Set by the gateway from what it knows; a client-sent copy would be a spoofing vector.
FORWARDING = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-real-ip",
        b"forwarded",
        b"x-request-id",  # the app's own (see GatewayApp), sent upstream by the proxy
    }
)
# Fields that frameworks read to rewrite the URL, host, scheme, port or client address
# (Symfony/Zend/IIS X-Original-URL and X-Rewrite-URL, Rails/Rack X-Forwarded-Scheme and
# X-Forwarded-Ssl, Django/Flask ProxyFix X-Forwarded-Prefix, ...).  From an arbitrary client
# they poison caches and bypass path-based rules, so, like X-Forwarded-For, they are removed
# unless the client is a trusted proxy.
URL_REWRITING = frozenset(
    {
        b"x-original-url",
        b"x-rewrite-url",
        b"x-original-host",
        b"x-forwarded-scheme",
        b"x-forwarded-server",
        b"x-forwarded-prefix",
        b"x-forwarded-ssl",
        b"x-forwarded-uri",
        b"x-forwarded-path",
        b"x-host",
        b"x-http-host-override",
        b"front-end-https",
        b"x-url-scheme",
        b"x-client-ip",
        b"true-client-ip",
        b"x-cluster-client-ip",
        b"x-originating-ip",
        b"x-remote-ip",
        b"x-remote-addr",
        b"client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
    }
)
# Handled by the gateway's own listener (uvicorn answers 100-continue when the body is read).
REQUEST_ONLY_LOCAL = frozenset({b"expect", b"content-length"})

VIA = b"1.1 gateway"
# Every field name ``upstream_request_headers`` treats otherwise than copying it.
_REQUEST_NAMED = HOP_BY_HOP | REQUEST_ONLY_LOCAL | URL_REWRITING | FORWARDING | {b"host", b"via"}


NONE_LISTED: frozenset[bytes] = frozenset()


def connection_listed(headers: Headers) -> frozenset[bytes]:
    """Header names listed in Connection, which are hop-by-hop for this one message."""
    listed: set[bytes] | None = None
    for name, value in headers:
        if name == b"connection":
            if listed is None:
                listed = set()
            listed.update(token.strip().lower() for token in value.split(b","))
    if listed is None:
        return NONE_LISTED  # most messages: no set built per request
    listed.discard(b"close")
    listed.discard(b"keep-alive")
    return frozenset(listed)


class TrustedProxies:
    """Networks whose X-Forwarded-For we extend instead of replace (Nginx ``set_real_ip_from``)."""

    def __init__(self, networks: Sequence[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def real_client(self, peer: str, forwarded_for: list[str]) -> str:
        """The first address, from the right, that is not a trusted proxy (Nginx realip)."""
        if not self.contains(peer):
            return peer
        for address in reversed(forwarded_for):
            if not self.contains(address):
                return address
        return forwarded_for[0] if forwarded_for else peer


def upstream_request_headers(
    headers: Headers,
    *,
    client: str,
    host: bytes,
    trusted: TrustedProxies,
    proto: bytes = b"https",
    request_id: bytes = b"",
) -> Headers:
    """The request headers to send upstream.

    Keeps the original Host (RFC 9110 §7.2), drops hop-by-hop and framing headers, replaces
    the forwarding family unless the peer is a trusted proxy, and appends Via (§7.6.3).
    Names with an underscore are dropped (Nginx's ``underscores_in_headers off``): CGI and
    WSGI map ``X_Forwarded_For`` and ``X-Forwarded-For`` onto the same variable, so an
    underscore spelling would slip past every rule here.
    """
    listed = connection_listed(headers)
    out: Headers = [(b"host", host)]
    prior_for: list[str] = []
    prior_via: bytes | None = None
    from_proxy = bool(trusted) and trusted.contains(client)
    for name, value in headers:
        # One set lookup for most fields (the hot path): only the named ones go further.
        # None of the named has an underscore.
        if name in _REQUEST_NAMED:
            if name in HOP_BY_HOP or name in REQUEST_ONLY_LOCAL or name == b"host":
                continue
            if listed and name in listed:
                continue
            if name in URL_REWRITING:
                if not from_proxy:
                    continue
            elif name in FORWARDING:
                if name == b"x-forwarded-for" and trusted:
                    prior_for.extend(
                        v.strip() for v in value.decode("latin-1").split(",") if v.strip()
                    )
                continue
            elif name == b"via":
                prior_via = value if prior_via is None else prior_via + b", " + value
                continue
        # find(), not ``in``: CPython's bytes ``in`` first tries the operand as an int and
        # raises and clears a TypeError, ~100 ns per field on the hot path.
        elif (listed and name in listed) or name.find(b"_") >= 0:
            continue
        out.append((name, value))

    if from_proxy:
        real_ip = trusted.real_client(client, prior_for)
        chain = ", ".join([*prior_for, client])
    else:
        real_ip = client
        chain = client
    out.append((b"x-forwarded-for", chain.encode("latin-1")))
    out.append((b"x-real-ip", real_ip.encode("latin-1")))
    out.append((b"x-forwarded-proto", proto))
    out.append((b"x-forwarded-host", host))
    out.append((b"via", VIA if prior_via is None else prior_via + b", " + VIA))
    if request_id:
        out.append((b"x-request-id", request_id))
    return out


def client_response_headers(
    headers: Headers, *, extra: Sequence[tuple[bytes, bytes]] = ()
) -> Headers:
    """The upstream's response headers as sent to the client.

    Hop-by-hop and framing headers go; Content-Length stays when the upstream sent one, else
    the listener frames the body itself, so the client sees exactly one framing header.
    One pass for the usual response, which has no Connection field to list more of them.
    """
    out: Headers = []
    for name, value in headers:
        if name in HOP_BY_HOP or name == b"x-request-id":
            if name == b"connection":
                return _without_listed(headers, extra)
            continue  # the client gets the gateway's own X-Request-ID (GatewayApp)
        out.append((name, value))
    out.extend(extra)
    return out


def _without_listed(headers: Headers, extra: Sequence[tuple[bytes, bytes]]) -> Headers:
    """``client_response_headers`` for a response with Connection: its listed names go too."""
    listed = connection_listed(headers)
    out: Headers = []
    for name, value in headers:
        if name in HOP_BY_HOP or name == b"x-request-id" or name in listed:
            continue
        out.append((name, value))
    out.extend(extra)
    return out


def header_value(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def response_fields(
    exchange: Exchange, status: int, headers: Headers, extra: Headers, timing: bool = False
) -> Headers:
    """A response's fields as the client gets them: the handler's, the configured extra
    fields, X-Request-ID and (``timing``) Server-Timing; records the status on ``exchange``."""
    exchange.status = status
    exchange.response_started = True
    # A new list: the handler's may be a stored cache entry's.
    headers = headers + extra
    headers.append((b"x-request-id", exchange.request_id.encode()))
    if timing:
        headers.append((b"server-timing", server_timing(exchange)))
    return headers


def server_timing(exchange: Exchange) -> bytes:
    """The Server-Timing value (W3C Server Timing): time to the response head, the part of it
    spent waiting for the upstream, and how the cache answered."""
    total = (time.perf_counter() - exchange.started) * 1000
    parts = [f"total;dur={total:.1f}"]
    if exchange.upstream != "-":
        parts.append(f"upstream;dur={exchange.upstream_seconds * 1000:.1f}")
    if exchange.cache != "-":
        parts.append(f"cache;desc={exchange.cache}")
    return ", ".join(parts).encode()
