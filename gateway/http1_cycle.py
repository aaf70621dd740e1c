"""The HTTP/1.1 response writer: uvicorn's request/response cycle with the gateway's ``send``.

uvicorn's ``RequestResponseCycle`` keeps the request's state (body, disconnect, keep-alive);
its ``send`` writes the response.  The listener (``gateway.listener``) turns each cycle into a
``GatewayCycle`` right after uvicorn builds it, which writes responses the same way with what
a proxy needs on top, and for less CPU on every message (the hot path):

- ``send`` is not a coroutine: it writes at once and returns a finished awaitable, unless the
  transport asked to pause (then it returns one that drains first).  uvicorn's ``async def
  send`` was a coroutine frame per message, and each wrapper around it (interim responses,
  HTTP/1.0) one more.
- Header fields are checked for forbidden bytes with two regular-expression searches per
  response (one over all names, one over all values) instead of two per field: the same
  check (RFC 9110 §5.1 token names, §5.5 no CTLs but HTAB in values), a fraction of the cost.
- Interim responses (``asgi.INTERIM``, e.g. an upstream's 103 Early Hints) are written as a
  1xx head at once, before the final response only, to HTTP/1.1 clients only (RFC 9110
  §15.2); any other time they are dropped, never an error.
- What a response writes in one event-loop iteration leaves at its end, in one write
  (``CorkedTransport``, ``WriteBatch``): uvicorn wrote the head and each body chunk apart, and
  over TLS each write is its own record and ``send()``; and the replies to a burst of requests
  leave back to back, which wakes the clients' side far less often than one ``send()`` per
  callback.
- An HTTP/1.0 client never gets a chunked response: a response without Content-Length goes
  out unframed and the connection's close delimits it (RFC 9112 §6.3).

Measured on one gateway process serving small cache hits (``wrk -t1 -c32``, CPU per request
from /proc, alternating runs): see bench/README.md, "Hot path: what was tried".
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Generator, Iterable
from http import HTTPStatus

from gateway.asgi import INTERIM, Message

try:
    from uvicorn.protocols.http.httptools_impl import (
        HEADER_RE,
        HEADER_VALUE_RE,
        RequestResponseCycle,
    )
except ImportError:  # pragma: no cover - httptools not installed
    RequestResponseCycle = object  # type: ignore[assignment,misc]


# Unframed HTTP/1.0 bodies: any length may follow (the close ends it).
UNBOUNDED = 1 << 62


class Done:
    """An awaitable that is already finished: what ``send`` returns when it wrote at once."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        yield from ()


DONE = Done()


def status_line(status: int) -> bytes:
    """``HTTP/1.1 200 OK`` and its CRLF (RFC 9112 §4); an unknown code gets an empty reason."""
    try:
        reason = HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        reason = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


STATUS_LINE = {status: status_line(status) for status in range(100, 600)}
_STATUS_TEXT = {status: line[:-2] for status, line in STATUS_LINE.items()}  # without its CRLF


def interim_head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """An HTTP/1.1 interim response head (RFC 9112 §4, RFC 9110 §15.2)."""
    lines = [STATUS_LINE[status]]
    lines += [name + b": " + value + b"\r\n" for name, value in headers]
    return b"".join(lines) + b"\r\n"


def _marking(forbidden: re.Pattern[bytes]) -> bytes:
    """A ``bytes.translate`` table that maps each byte ``forbidden`` matches to 0, any
    other to 1."""
    return bytes(0 if forbidden.match(bytes([byte])) else 1 for byte in range(256))


# uvicorn's two patterns as tables: one C pass per byte and a memchr instead of the
# regular-expression engine, a third less CPU for a small response's fields.
_NAME_BYTES = _marking(HEADER_RE)
_VALUE_BYTES = _marking(HEADER_VALUE_RE)


def checked_fields(fields: list[tuple[bytes, bytes]]) -> None:
    """Refuse a field name that is not a token or a value with a CTL other than HTAB, as
    uvicorn does (``HEADER_RE``, ``HEADER_VALUE_RE``), with one pass over all names and one
    over all values.  ``b"a"`` is a token character, so it joins names without creating or
    hiding a bad byte; ``b" "`` likewise for values."""
    if b"a".join([name for name, _ in fields]).translate(_NAME_BYTES).find(0) >= 0:
        raise RuntimeError("Invalid HTTP header name.")
    if b" ".join([value for _, value in fields]).translate(_VALUE_BYTES).find(0) >= 0:
        raise RuntimeError("Invalid HTTP header value.")


class GatewayCycle(RequestResponseCycle):
    """uvicorn's cycle with the writer described in the module docstring.  The listener sets
    ``interim`` (an HTTP/1.1 client) and ``http10`` on the instance."""

    interim = False
    http10 = False
    unframed = False  # an HTTP/1.0 response delimited by the close

    def send(self, message: Message) -> Awaitable[None]:  # type: ignore[override]
        if self.flow.write_paused and not self.disconnected:
            return self._drain_then_send(message)
        self.write(message)
        return DONE

    async def _drain_then_send(self, message: Message) -> None:
        await self.flow.drain()
        self.write(message)

    def write(self, message: Message) -> None:
        if self.disconnected:
            return
        kind = message["type"]
        if kind == INTERIM:
            if self.interim and not self.response_started and not self.transport.is_closing():
                self.transport.write(interim_head(message["status"], message["headers"]))
            return
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{kind}'."
                )
            self._write_head(message["status"], message.get("headers", ()))
        elif not self.response_complete:
            if kind != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
            self._write_body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{kind}' sent, after response already completed."
            )

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole response at once, for the express lane: the bytes of
        ``http.response.start`` and a last ``http.response.body``, without the messages and
        the dispatch on their types (the lane checked the flow first).

        Its fields are not searched for forbidden bytes: the upstream's passed the response
        parser, which refuses what ``checked_fields`` would (llhttp and h11 both; a test
        holds them to it), and the gateway's own are made from checked config values and
        tokens.  The search was 5.6% of a small proxied request's instructions.

        Nor do they need ``_write_head``'s look at each field: the lane's are lowercase and
        hold no Connection or Transfer-Encoding (hop-by-hop, removed).  A body of the
        Content-Length to an HTTP/1.1 GET, the lane's usual answer, goes out as the head and
        the body in one piece; anything else takes the general writer."""
        if self.disconnected:
            return
        if self.response_started:
            raise RuntimeError("Unexpected ASGI message 'http.response.start' sent.")
        length = None
        for name, value in headers:
            if name == b"content-length":
                length = value
                break
        if (
            length is None
            or self.http10
            or self.scope["method"] == "HEAD"
            or not length.isdigit()
            or int(length) != len(body)
        ):
            self._write_head(status, headers, checked=True)
            self._write_body(body, False)
            return
        self.response_started = True
        self.waiting_for_100_continue = False
        self.chunked_encoding = False
        # "name: value" lines made in C (``map``), not a bytecode loop per field.
        lines = [_STATUS_TEXT[status], *map(b": ".join, self.default_headers)]
        lines += map(b": ".join, headers)
        if not self.keep_alive:
            lines.append(b"connection: close")
        lines += (b"", body)
        self.transport.write(b"\r\n".join(lines))
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()

    def _write_head(
        self, status: int, headers: Iterable[tuple[bytes, bytes]], checked: bool = False
    ) -> None:
        self.response_started = True
        self.waiting_for_100_continue = False
        fields: list[tuple[bytes, bytes]] = self.default_headers + list(headers)
        if not checked:
            checked_fields(fields)
        content = [STATUS_LINE[status]]
        has_connection_close = False
        for name, value in fields:
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                if b"close" in [token.lower().strip() for token in value.split(b",")]:
                    self.keep_alive = False
                    has_connection_close = True
            content += (name, b": ", value, b"\r\n")
        chunked = False
        if self.chunked_encoding is None and not (
            self.scope["method"] == "HEAD" or status in (204, 304)
        ):
            if self.http10:
                # No chunked framing for a 1.0 client: the close ends the body.
                self.unframed = True
                self.keep_alive = False
                self.chunked_encoding = False
                self.expected_content_length = UNBOUNDED
            else:
                self.chunked_encoding = chunked = True
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if chunked:
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))

    def _write_body(self, body: bytes, more_body: bool) -> None:
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
        elif self.chunked_encoding:
            content = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
            if not more_body:
                content.append(b"0\r\n\r\n")
            self.transport.write(b"".join(content))
        else:
            size = len(body)
            if size > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= size
            self.transport.write(body)
        if more_body:
            return
        if self.expected_content_length != 0 and not self.unframed:
            raise RuntimeError("Response content shorter than Content-Length")
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()
