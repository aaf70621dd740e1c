"""Response parser on h11: the pure-Python fallback when httptools is not installed."""

from __future__ import annotations

import h11

from gateway.http1_cycle import checked_fields
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


def _refuse_what_httptools_refuses(headers: list[tuple[bytes, bytes]]) -> None:
    """h11 tolerates framing that llhttp rejects; the fallback must not be the laxer one."""
    lengths = sum(1 for name, _ in headers if name == b"content-length")
    chunked = any(name == b"transfer-encoding" for name, _ in headers)
    if lengths and chunked:
        raise ProtocolError("invalid response from upstream: Content-Length with Transfer-Encoding")
    if lengths > 1:
        raise ProtocolError("invalid response from upstream: conflicting Content-Length")
    # h11 takes control characters in a field value; llhttp refuses them (RFC 9110 §5.5),
    # and the express lane relays the fields unsearched (``GatewayCycle.respond``).
    try:
        checked_fields(headers)
    except RuntimeError:
        raise ProtocolError(
            "invalid response from upstream: a control character in a field"
        ) from None


class H11ResponseParser:
    """The same interface as ``HttpToolsResponseParser``, on an h11 client connection.

    h11 insists on seeing the request it parses a response for, so ``start`` feeds it a
    stand-in request with the right method; the real request bytes are written elsewhere.
    """

    __slots__ = ("_conn", "_head_bytes", "must_close")

    def __init__(self) -> None:
        # h11's own bound on an incomplete event is the head bound: the same as httptools'.
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        self._head_bytes = 0
        self.must_close = False

    def start(self, *, head_request: bool, upgrade: bool = False) -> None:
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        method = b"HEAD" if head_request else b"GET"
        headers = [(b"host", b"upstream")]
        if upgrade:  # h11 accepts a 101 only to a request that asked for it
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
        conn.send(h11.Request(method=method, target=b"/", headers=headers))
        conn.send(h11.EndOfMessage())
        self._head_bytes = 0

    def feed(self, data: bytes) -> list[ResponseEvent]:
        conn = self._conn
        if conn.their_state is h11.DONE:
            raise ProtocolError("upstream sent data after the end of the response")
        in_head = conn.their_state is h11.SEND_RESPONSE
        conn.receive_data(data)
        events = self._drain()
        if in_head and conn.their_state is h11.SEND_RESPONSE:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_RESPONSE_HEAD:
                raise ProtocolError(HEAD_TOO_BIG)
        if conn.their_state is h11.DONE and conn.trailing_data[0]:
            # Junk after a complete response: deliver the response, never reuse the
            # connection (the junk must not be read as the next response).
            self.must_close = True
        return events

    def feed_eof(self) -> list[ResponseEvent]:
        if self._conn.their_state is h11.SEND_BODY:
            self._conn.receive_data(b"")
            try:
                return self._drain()
            except ProtocolError:
                return []
        return []

    def _drain(self) -> list[ResponseEvent]:
        events: list[ResponseEvent] = []
        conn = self._conn
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if exc.error_status_hint == 431:  # h11's incomplete-event bound
                    raise ProtocolError(HEAD_TOO_BIG) from exc
                raise ProtocolError(f"invalid response from upstream: {exc}") from exc
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return events
            if isinstance(event, h11.Response):
                headers = [(name.lower(), value) for name, value in event.headers.raw_items()]
                _refuse_what_httptools_refuses(headers)
                if sum(len(n) + len(v) + 4 for n, v in headers) > MAX_RESPONSE_HEAD:
                    raise ProtocolError(HEAD_TOO_BIG)
                close = any(
                    name == b"connection" and b"close" in value.lower() for name, value in headers
                )
                framed = event.status_code in (204, 304) or any(
                    name in (b"content-length", b"transfer-encoding") for name, _ in headers
                )
                keep_alive = framed and not close and event.http_version == b"1.1"
                events.append(
                    ResponseHead(
                        event.status_code, headers, keep_alive, event.http_version.decode()
                    )
                )
            elif isinstance(event, h11.Data):
                events.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                events.append(END_OF_MESSAGE)
                return events
            elif isinstance(event, h11.ConnectionClosed):
                return events
            elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                headers = [(name.lower(), value) for name, value in event.headers.raw_items()]
                events.append(ResponseHead(101, headers, False, event.http_version.decode()))
                events.append(Upgraded(bytes(conn.trailing_data[0])))
                return events
            elif (
                isinstance(event, h11.InformationalResponse)
                and event.status_code in RELAYED_INTERIM
            ):
                headers = [(name.lower(), value) for name, value in event.headers.raw_items()]
                events.append(Interim(event.status_code, headers))
            # Anything else (100 Continue) is not forwarded.
