"""An HTTP/2 request's header block as the ASGI scope the HTTP/1.1 listener builds, and back.

Pure functions, no I/O.  The h2 library's own header validation is switched off (it turns
every malformed request into a connection error, and walks the list a second time); these
functions do that job in the one pass that also builds the scope, and a malformed request is
a stream error (RFC 9113 §8.1.1): ``MalformedRequest``, answered with RST_STREAM.

What the rest of the gateway relies on:

- ``headers`` never holds a pseudo-header, and holds exactly one ``host``: the
  ``:authority`` (or, without one, the ``host`` field), so ``validation.check_request``
  judges it like an HTTP/1.1 Host (unknown name -> 421) and the upstream sees an ordinary
  HTTP/1.1 request.
- Nothing that could change the meaning of the HTTP/1.1 request we forward gets through: CR,
  LF or NUL in a value, upper-case or non-token names, connection-specific fields
  (RFC 9113 §8.2.2), ``TE`` other than ``trailers``.
- A request whose body length is not announced gets ``transfer-encoding: chunked`` in the
  scope, so the proxy frames it for the HTTP/1.1 upstream exactly as it does a chunked
  HTTP/1.1 request.
"""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import unquote

Headers = list[tuple[bytes, bytes]]

# RFC 9113 §8.2.2: meaningless in HTTP/2, and dangerous to pass on to an HTTP/1.1 upstream.
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
# Never sent in an HTTP/2 response: the HTTP/1.1 framing the app may still mention.
RESPONSE_DROPPED = CONNECTION_SPECIFIC

_TOKEN_LOWER = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")


class MalformedRequest(Exception):
    """A request RFC 9113 §8.1.1 calls malformed: a stream error of type PROTOCOL_ERROR."""


@functools.lru_cache(maxsize=512)
def _valid_name(name: bytes) -> bool:
    # Memoized: a connection sees the same few dozen names over and over.
    return _TOKEN_LOWER.fullmatch(name) is not None


_OWS = (0x20, 0x09)  # SP, HTAB


def _check_value(value: bytes) -> bool:
    # RFC 9113 §8.2.1: no NUL, CR or LF anywhere, no leading or trailing whitespace.
    # find(), not ``in`` (see gateway.headers.upstream_request_headers): a third of the time.
    if value.find(b"\r") >= 0 or value.find(b"\n") >= 0 or value.find(b"\x00") >= 0:
        return False
    return not value or (value[0] not in _OWS and value[-1] not in _OWS)


# Memoized like names for the values that come back with every request (User-Agent, Accept,
# :authority...): a third of the cost (bench/README.md, "Session 9").  Short ones only, so
# what the cache holds stays small (512 x 256 bytes at most).
_check_short_value = functools.lru_cache(maxsize=512)(_check_value)
SHORT_VALUE = 256


def _valid_value(value: bytes) -> bool:
    if len(value) <= SHORT_VALUE:
        return _check_short_value(value)
    return _check_value(value)


def request_scope(
    block: Any,
    end_stream: bool,
    base: dict[str, Any],
) -> dict[str, Any]:
    """The ASGI http scope of one request header block (``base`` holds the per-connection
    keys: server, client, asgi, state...).  Raises MalformedRequest."""
    method = scheme = authority = path = None
    regular = False
    headers: Headers = []
    host: bytes | None = None
    cookies: list[bytes] = []
    has_length = False
    for name, value in block:
        if name[:1] == b":":
            # Pseudo-headers come first, each once (RFC 9113 §8.3).
            if regular:
                raise MalformedRequest(f"pseudo-header {name!r} after a regular field")
            if name not in REQUEST_PSEUDO:
                raise MalformedRequest(f"unknown pseudo-header {name!r}")
            if name == b":method":
                if method is not None:
                    raise MalformedRequest("repeated :method")
                method = value
            elif name == b":path":
                if path is not None:
                    raise MalformedRequest("repeated :path")
                path = value
            elif name == b":authority":
                if authority is not None:
                    raise MalformedRequest("repeated :authority")
                authority = value
            else:
                if scheme is not None:
                    raise MalformedRequest("repeated :scheme")
                scheme = value
            continue
        regular = True
        if not _valid_name(name):
            raise MalformedRequest(f"invalid field name {name!r}")
        if not _valid_value(value):
            raise MalformedRequest(f"invalid value for {name.decode('latin-1')}")
        if name in CONNECTION_SPECIFIC:
            raise MalformedRequest(f"connection-specific field {name.decode()} in HTTP/2")
        if name == b"te":
            if value.lower() != b"trailers":
                raise MalformedRequest('TE other than "trailers" in HTTP/2')
            continue  # hop-by-hop: never forwarded
        if name == b"host":
            if host is not None:
                raise MalformedRequest("repeated host field")
            host = value
            continue
        if name == b"cookie":
            # RFC 9113 §8.2.3: crumbs are joined again for an HTTP/1.1 hop.
            cookies.append(value)
            continue
        if name == b"content-length":
            has_length = True
        headers.append((name, value))

    if method is None:
        raise MalformedRequest("missing :method")
    try:
        method_text = method.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedRequest("invalid :method") from None
    if not _valid_name(method.lower()) or method_text != method_text.upper():
        raise MalformedRequest("invalid :method")
    if authority is not None:
        if not authority or not _valid_value(authority) or b"@" in authority:
            raise MalformedRequest("invalid :authority")
        if host is not None and host.lower() != authority.lower():
            # RFC 9113 §8.3.1: Host naming another entity than :authority.
            raise MalformedRequest("host field differs from :authority")
        host = authority
    if method_text == "CONNECT":
        # No :path or :scheme (RFC 9113 §8.5); validation refuses CONNECT with a clear 400.
        raw_path, query = b"", b""
    else:
        if scheme is None or path is None:
            raise MalformedRequest("missing :scheme or :path")
        if not path or not _valid_value(path) or b" " in path:
            raise MalformedRequest("invalid :path")
        raw_path, _, query = path.partition(b"?")
    try:
        text_path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedRequest("non-ASCII :path") from None
    if "%" in text_path:
        text_path = unquote(text_path)

    if host is not None:
        headers.insert(0, (b"host", host))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    if not end_stream and not has_length:
        # A body of unannounced length: chunked is how the HTTP/1.1 upstream will get it.
        headers.append((b"transfer-encoding", b"chunked"))
    scope = dict(base)
    scope["method"] = method_text
    scope["path"] = text_path
    scope["raw_path"] = raw_path
    scope["query_string"] = query
    scope["headers"] = headers
    return scope


def response_headers(status: int, headers: Headers) -> Headers:
    """The response header block: ``:status`` first, names lower-case, no HTTP/1.1
    connection management (the app and the upstream may still send it)."""
    block: Headers = [(b":status", b"%d" % status)]
    for name, value in headers:
        name = name.lower()
        if name not in RESPONSE_DROPPED:
            block.append((name, value))
    return block
