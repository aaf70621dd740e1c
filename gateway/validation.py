"""What a proxy must refuse before forwarding: ambiguous framing, bad or foreign hosts.

uvicorn (like most servers) is lenient where an origin server can afford to be; a proxy
cannot, because the upstream may read the same bytes differently (request smuggling, RFC 9112
§6.3 and §11.2) or because a Host we do not serve would make us an open proxy.  Everything here
is a pure function of the ASGI scope, so it is unit-tested without a server.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import (
    CONNECT_REFUSED,
    LoopDetected,
    MethodNotAllowed,
    MisdirectedRequest,
    NotImplementedMethod,
    RequestRejected,
)
from gateway.headers import VIA

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})

# What the gateway answers itself for ``OPTIONS`` with ``Max-Forwards: 0`` (RFC 9110 §7.6.2).
ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# Percent-encodings the router (which matches the decoded path) and an upstream (which gets the
# raw one) could read differently: "/" and "\" (a new segment for one of them), and control
# characters such as NUL (a C string's end).  Nginx also refuses an encoded NUL.
_AMBIGUOUS_ESCAPE = re.compile(rb"%(2[fF]|5[cC]|[01][0-9a-fA-F]|7[fF])")


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The names this gateway serves: ``hostnames`` (``*.example.test`` wildcards allowed)
    plus the loopback IPs, which the certificate always covers."""

    names: frozenset[str]
    wildcard_suffixes: tuple[str, ...]

    @classmethod
    def from_hostnames(cls, hostnames: Iterable[str]) -> HostPolicy:
        names = set(LOOPBACK_HOSTS)
        suffixes = []
        for name in hostnames:
            name = name.lower()
            if name.startswith("*."):
                suffixes.append(name[1:])  # keep the dot: "*.a.test" -> ".a.test"
            else:
                names.add(name)
        return cls(frozenset(names), tuple(suffixes))

    def allows(self, hostname: str) -> bool:
        if hostname in self.names:
            return True
        # A wildcard covers exactly one label, as in certificates (RFC 6125 §6.4.3).
        return any(
            hostname.endswith(s) and "." not in hostname[: -len(s)] and len(hostname) > len(s)
            for s in self.wildcard_suffixes
        )


@functools.lru_cache(maxsize=1024)
def parse_host(value: str) -> tuple[str, int | None]:
    """Split a Host value (RFC 9110 §7.2) into a lowercase name and optional port.

    Raises ValueError for anything that is not ``name[:port]``, ``IPv4[:port]`` or
    ``[IPv6][:port]``: such a value must never reach a redirect Location or a cache key.
    Memoized: a server sees the same few Host values over and over (errors are not cached).
    """
    port: int | None = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError("unclosed IPv6 literal")
        host = value[1:end]
        rest = value[end + 1 :]
        ipaddress.IPv6Address(host)
        if rest:
            if not rest.startswith(":"):
                raise ValueError("junk after IPv6 literal")
            port = _port(rest[1:])
        return str(ipaddress.IPv6Address(host)), port
    host, sep, port_text = value.partition(":")
    if sep:
        port = _port(port_text)
    host = host.lower().rstrip(".")
    if not host or len(host) > 253:
        raise ValueError("empty or over-long host")
    if not all(c.isascii() and (c.isalnum() or c in "-.") for c in host):
        raise ValueError("invalid character in host")
    return host, port


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise ValueError("invalid port")
    return int(text)


@dataclass(slots=True)
class RequestFacts:
    """What the checks established about a request that passed them.  Not frozen: a frozen
    dataclass sets each field through ``object.__setattr__``, on every request."""

    host: str  # the Host header value to forward (authority of an absolute-form target wins)
    hostname: str
    content_length: int | None
    chunked: bool


def check_request(
    scope: Mapping[str, Any], hosts: HostPolicy, *, routed: bool = True
) -> RequestFacts:
    """Refuse requests that are ambiguous or not for us; return the facts the proxy needs.

    RequestRejected (400, connection closed) for framing and syntax problems,
    MisdirectedRequest (421) for a well-formed Host we do not serve (or that the connection's
    TLS certificate does not cover).  ``routed``: the path will be routed and forwarded, so
    encodings the router and the upstream could read differently are refused too (the plain
    HTTP listener only redirects, keeping the target as it is).

    It runs on every request, so the common case (one Host, no body, a plain path) takes
    no list, no extra call and no regular expression; the rare fields are collected only
    when they are there.
    """
    method = scope["method"]
    if method == "CONNECT":
        raise NotImplementedMethod(CONNECT_REFUSED)
    if method == "TRACE":
        # Nginx answers 405 too: echoing a request back exposes cookies to scripts (XST).
        raise MethodNotAllowed("TRACE is not allowed", ALLOWED_METHODS)

    host = b""
    host_count = 0
    content_lengths: list[bytes] | None = None
    transfer_encodings: list[bytes] | None = None
    for name, value in scope["headers"]:
        if name == b"host":
            host = value
            host_count += 1
        elif name == b"content-length":
            content_lengths = [value] if content_lengths is None else [*content_lengths, value]
        elif name == b"transfer-encoding":
            transfer_encodings = (
                [value] if transfer_encodings is None else [*transfer_encodings, value]
            )
        elif name == b"via" and passed_here(value):
            raise LoopDetected("the request has already passed this gateway (Via): a loop")

    # Request smuggling guards (RFC 9112 §6.1, §6.3): exactly one way to find the body's end.
    content_length: int | None = None
    chunked = False
    if content_lengths is not None or transfer_encodings is not None:
        content_length, chunked = _framing(scope, content_lengths, transfer_encodings)

    if host_count != 1:
        raise RequestRejected(
            "exactly one Host header is required" if host_count else "missing Host header"
        )
    host_value = host.decode("latin-1")

    target = scope.get("gateway.target") or scope.get("raw_path") or b""
    absolute = target[:1] != b"/" and (
        target[:7].lower() == b"http://" or target[:8].lower() == b"https://"
    )
    if absolute:
        # Absolute form (RFC 9112 §3.2.2): the target's authority replaces Host.
        authority = target.split(b"//", 1)[1].split(b"/", 1)[0].split(b"?", 1)[0]
        host_value = authority.decode("latin-1")
    try:
        hostname, _ = parse_host(host_value)
    except ValueError:
        where = "authority in the request target" if absolute else "Host header"
        raise RequestRejected(f"invalid {where}") from None
    if hostname not in hosts.names and not hosts.allows(hostname):
        if absolute:
            raise RequestRejected(f"not an open proxy: {hostname!r} is not served here")
        raise MisdirectedRequest(f"host {hostname!r} is not served here")
    sni: str | None = scope.get("gateway.sni")
    if sni is not None and sni != hostname:
        # (The same name as Host passes: served, and the certificate was chosen for it.)
        check_server_name(sni, hostname, hosts, scope.get("gateway.cert_names"))

    path: str = scope["path"]
    if not path.startswith("/") and not absolute:
        raise RequestRejected("the request target must be an absolute path")
    if "." in path and has_dot_segments(path):
        raise RequestRejected('the path must not contain "." or ".." segments')
    problem = ambiguous_path(scope.get("raw_path") or b"", path) if routed else None
    if problem:
        raise RequestRejected(f"the path must not contain {problem}")
    return RequestFacts(host_value, hostname, content_length, chunked)


def _framing(
    scope: Mapping[str, Any],
    content_lengths: list[bytes] | None,
    transfer_encodings: list[bytes] | None,
) -> tuple[int | None, bool]:
    """The body's length and whether it is chunked, from the request's framing fields;
    RequestRejected unless there is exactly one way to find the body's end."""
    if content_lengths is not None and transfer_encodings is not None:
        raise RequestRejected("both Content-Length and Transfer-Encoding are present")
    if content_lengths is not None:
        if len(content_lengths) > 1:
            raise RequestRejected("repeated Content-Length header")
        text = content_lengths[0].strip()
        if not text.isdigit() or len(text) > 18:
            raise RequestRejected("Content-Length is not a single non-negative integer")
        return int(text), False
    assert transfer_encodings is not None
    if scope.get("http_version") == "1.0":
        # RFC 9112 §6.1: a 1.0 message with Transfer-Encoding has faulty framing.
        raise RequestRejected("Transfer-Encoding in an HTTP/1.0 request")
    if len(transfer_encodings) > 1 or transfer_encodings[0].strip().lower() != b"chunked":
        raise RequestRejected('Transfer-Encoding must be exactly "chunked"')
    return None, True


def check_server_name(
    sni: str, hostname: str, hosts: HostPolicy, cert_names: tuple[str, ...] | None
) -> None:
    """421 (RFC 9110 §7.4, §15.5.20) when the TLS connection was not set up for this Host:
    its SNI names a host we do not serve, or its certificate does not cover the Host.

    A Host other than the SNI is fine when the same certificate covers both (one connection,
    several names: what HTTP/2 connection reuse relies on); Nginx answers 421 in the same case,
    when the Host's server would have needed another certificate.
    """
    name = sni.lower().rstrip(".")
    if not hosts.allows(name):
        raise MisdirectedRequest(f"the TLS server name {sni!r} is not served here")
    if name != hostname and cert_names is not None and not covers(cert_names, hostname):
        raise MisdirectedRequest(
            f"host {hostname!r} is not covered by this connection's certificate "
            f"(TLS server name {sni!r}); connect with that name instead"
        )


def covers(names: tuple[str, ...], hostname: str) -> bool:
    """Whether certificate names cover ``hostname``; a wildcard covers one label (RFC 6125)."""
    for name in names:
        name = name.lower()
        if name == hostname:
            return True
        if name.startswith("*."):
            suffix = name[1:]
            head = hostname[: -len(suffix)]
            if hostname.endswith(suffix) and head and "." not in head:
                return True
    return False


def ambiguous_path(raw_path: bytes, path: str) -> str | None:
    """What makes a path mean one thing to the router and another to the upstream, or None.

    The router matches the decoded path while the upstream is sent the raw one, so any
    encoding that decodes to a separator, a control character or invalid UTF-8 (overlong
    forms such as ``%c0%af`` for "/") would let the two disagree (path-based rules bypassed).
    """
    if raw_path.find(b"\\") >= 0:  # not ``in`` (see gateway.headers): per request
        return "a backslash"
    match = _AMBIGUOUS_ESCAPE.search(raw_path) if raw_path.find(b"%") >= 0 else None
    if match:
        return f"the encoded character %{match.group(1).decode().upper()}"
    if "\ufffd" in path and b"%ef%bf%bd" not in raw_path.lower():
        return "percent-encoded bytes that are not UTF-8"
    return None


def passed_here(via: bytes) -> bool:
    """Whether a Via value lists this gateway (RFC 9110 §7.6.3): the request is looping."""
    return any(part.strip() == VIA for part in via.split(b","))


def answers_options_itself(scope: Mapping[str, Any]) -> bool:
    """``OPTIONS`` with ``Max-Forwards: 0``: the gateway is the final recipient and must not
    forward it (RFC 9110 §7.6.2); Nginx forwards it regardless."""
    if scope["method"] != "OPTIONS":
        return False
    return any(n == b"max-forwards" and v.strip() == b"0" for n, v in scope["headers"])


def has_dot_segments(path: str) -> bool:
    """True if any segment of the (percent-decoded) path is "." or "..".

    Refusing them, rather than resolving them, keeps routing, caching and the upstream's own
    path handling in agreement about which resource is meant.
    """
    if "." not in path:
        return False
    return any(segment in (".", "..") for segment in path.split("/"))
