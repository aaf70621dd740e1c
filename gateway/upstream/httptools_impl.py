"""Response parser on httptools (llhttp): the fast path, used when the library is installed."""

from __future__ import annotations

import httptools

from gateway.upstream.events import (
    END_OF_MESSAGE,
    HEAD_TOO_BIG,
    MAX_RESPONSE_HEAD,
    RELAYED_INTERIM,
    Interim,
    ProtocolError,
    ResponseEvent,
    ResponseHead,
    Upgraded,
)


def is_framed(headers: list[tuple[bytes, bytes]]) -> bool:
    """RFC 9112 §6.3: a body is delimited by Content-Length or a final chunked coding;
    otherwise (e.g. ``Transfer-Encoding: gzip`` alone) it runs until the server closes."""
    for name, value in headers:
        if name == b"content-length":
            return True
        if name == b"transfer-encoding":
            return value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
    return False


class HttpToolsResponseParser:
    """Feed bytes, get back ``ResponseHead`` / ``bytes`` / ``EndOfMessage`` events.

    llhttp cannot be told that a response answers a HEAD request, so for HEAD the message
    ends at the head and the next response gets a fresh llhttp parser (see ``start``).
    Interim 1xx responses (102-199) become ``Interim`` events; 100 is dropped.  A request
    started with ``upgrade=True`` (a WebSocket handshake) may instead get ``101``: its head is
    delivered, followed by ``Upgraded`` with the bytes after it, and the parser is done.

    Nothing may follow a complete response before the next request: a second response in the
    same read (or body bytes after a 204/304 or a HEAD response) ends parsing there, the first
    response is delivered intact and ``must_close`` keeps the connection from being reused;
    bytes in a later read are a ``ProtocolError``.  Heads are bounded by MAX_RESPONSE_HEAD.
    """

    __slots__ = (
        "_parser",
        "_events",
        "_headers",
        "_head_only",
        "_in_message",
        "_done",
        "_framed",
        "_upgrade",
        "_switched",
        "_head_bytes",
        "must_close",
    )

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._events: list[ResponseEvent] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_only = False
        self._in_message = False
        self._done = False
        self._framed = True
        self._upgrade = False
        self._switched = False
        self._head_bytes = 0  # bytes of the response head(s) so far
        # Set when the connection must not carry another exchange (junk after a response).
        self.must_close = False

    def start(self, *, head_request: bool, upgrade: bool = False) -> None:
        """Prepare for the response to the next request on this connection."""
        if self._head_only and self._done:
            self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_request
        self._upgrade = upgrade
        self._in_message = False
        self._done = False
        self._framed = True
        self._headers = []
        self._head_bytes = 0

    def feed(self, data: bytes) -> list[ResponseEvent]:
        events: list[ResponseEvent] = []
        self._events = events
        if self._done:
            raise ProtocolError("upstream sent data after the end of the response")
        in_head = not self._in_message
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if not self._switched:
                raise ProtocolError("upstream switched protocols unasked") from exc
            self._done = True
            events.append(Upgraded(data[exc.args[0] :]))
        except httptools.HttpParserError as exc:
            if self._done:
                # Junk after a complete response: deliver the response, never reuse the
                # connection (the junk must not be read as the next response).
                self.must_close = True
                return events
            if isinstance(exc.__context__, ProtocolError):
                raise exc.__context__ from None
            raise ProtocolError(f"invalid response from upstream: {exc}") from exc
        if in_head and not self._in_message and not self._done:
            # A head arriving in many small reads: bound what llhttp is holding for us.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_RESPONSE_HEAD:
                raise ProtocolError(HEAD_TOO_BIG)
        return events

    def feed_eof(self) -> list[ResponseEvent]:
        """The server closed the connection: that ends a body delimited by close."""
        if self._in_message and not self._done and not self._framed:
            self._done = True
            return [END_OF_MESSAGE]
        return []

    # -- llhttp callbacks --------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._done:
            # A second response to one request (RFC 9112 §9.3: responses answer requests in
            # order, one each): stop here, keep the first, never reuse the connection.
            self.must_close = True
            raise ProtocolError("upstream sent a response nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_RESPONSE_HEAD:
            raise ProtocolError(HEAD_TOO_BIG)
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        headers = self._headers
        self._headers = []
        if status < 200:
            if status == 101 and self._upgrade:
                self._switched = True
                self._events.append(ResponseHead(status, headers, False, parser.get_http_version()))
            elif status in RELAYED_INTERIM:
                self._events.append(Interim(status, headers))
            return
        self._in_message = True
        self._framed = status in (204, 304) or is_framed(headers)
        version = parser.get_http_version()
        # HTTP/1.0 keep-alive is a pre-standard extension: such a connection is not reused.
        keep_alive = version == "1.1" and parser.should_keep_alive()
        self._events.append(ResponseHead(status, headers, keep_alive, version))
        if self._head_only:
            self._done = True
            self._events.append(END_OF_MESSAGE)

    def on_body(self, body: bytes) -> None:
        if not self._done:
            self._events.append(body)
        else:
            self.must_close = True  # a body after a HEAD response's head: junk

    def on_message_complete(self) -> None:
        if self._in_message and not self._done:
            self._done = True
            self._events.append(END_OF_MESSAGE)
