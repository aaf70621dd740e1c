"""Response parser on h11: the pure-Python fallback when httptools is not installed."""

from __future__ import annotations

import h11

from gateway.upstream.events import END_OF_MESSAGE, ProtocolError, ResponseEvent, ResponseHead


class H11ResponseParser:
    """The same interface as ``HttpToolsResponseParser``, on an h11 client connection.

    h11 insists on seeing the request it parses a response for, so ``start`` feeds it a
    stand-in request with the right method; the real request bytes are written elsewhere.
    """

    __slots__ = ("_conn",)

    def __init__(self) -> None:
        self._conn = h11.Connection(h11.CLIENT)

    def start(self, *, head_request: bool) -> None:
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        method = b"HEAD" if head_request else b"GET"
        conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"upstream")]))
        conn.send(h11.EndOfMessage())

    def feed(self, data: bytes) -> list[ResponseEvent]:
        self._conn.receive_data(data)
        return self._drain()

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
                raise ProtocolError(f"invalid response from upstream: {exc}") from exc
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return events
            if isinstance(event, h11.Response):
                headers = [(name.lower(), value) for name, value in event.headers.raw_items()]
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
            # h11.InformationalResponse: interim 1xx, not forwarded.
