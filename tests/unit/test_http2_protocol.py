"""The HTTP/2 connection protocol driven in-process: a fake transport on one side, an h2
client connection object on the other, a small ASGI app in the middle (no sockets).

Pins the decisions an e2e test only sees from outside: what flow control lets through before
the app reads or the client acknowledges, which streams never reach the app, which frames
end a connection and with what error code."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)

from gateway.http2.dispatch import ALPNDispatchProtocol
from gateway.http2.limits import Http2Limits
from gateway.http2.protocol import FLUSH_BYTES, RECORD_PAYLOAD, H2Protocol
from gateway.listener import http_protocol_class

App = Callable[[Any, Any, Any], Awaitable[None]]
GET = [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", "/")]


class FakeTransport:
    """What the protocol uses of an asyncio transport; closing reports connection_lost."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, alpn: str | None = "h2", sni: str | None = None
    ) -> None:
        self.loop = loop
        self.sni = sni
        self.written = bytearray()
        self.closed = asyncio.Event()
        self.protocol: Any = None
        self.alpn = alpn

    def write(self, data: bytes) -> None:
        if not self.closed.is_set():
            self.written += data

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            if self.protocol is not None:
                self.loop.call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed.is_set()

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return SimpleNamespace(
                selected_alpn_protocol=lambda: self.alpn,
                gateway_sni=self.sni,
                gateway_cert_names=("localhost", "127.0.0.1"),
            )
        return default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Peer:
    """An h2 client talking to an ``H2Protocol`` through a ``FakeTransport``."""

    def __init__(self, app: App, limits: Http2Limits | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = FakeTransport(self.loop)
        self.state = SimpleNamespace(connections=set(), tasks=set())
        self.server = H2Protocol(
            app, limits or Http2Limits(), self.state, {}, self.loop, client=("127.0.0.1", 1)
        )
        self.transport.protocol = self.server
        self.server.connection_made(self.transport)  # type: ignore[arg-type]
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.client.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.send()

    def send(self, raw: bytes = b"") -> None:
        """What the client has queued (plus ``raw`` frames), as one read on the server."""
        self.server.data_received(self.client.data_to_send() + raw)

    async def settle(self) -> list[h2.events.Event]:
        """Let the server's tasks run, then read everything it wrote."""
        for _ in range(5):
            await asyncio.sleep(0)
        data = bytes(self.transport.written)
        self.transport.written.clear()
        if data:
            new = self.client.receive_data(data)
            self.events += new
            self.server.data_received(self.client.data_to_send())  # acks
        return self.events

    def request(self, stream_id: int, path: str) -> None:
        """Open ``stream_id`` with a whole GET request for ``path``, as one read."""
        self.client.send_headers(stream_id, [*GET[:3], (":path", path)], end_stream=True)
        self.send()

    async def get(self, stream_id: int = 1) -> list[h2.events.Event]:
        """Open ``stream_id`` with a whole GET request, and settle."""
        self.client.send_headers(stream_id, GET, end_stream=True)
        self.send()
        return await self.settle()

    async def wire(self) -> list[Frame]:
        """Let the server's tasks run, then parse what it wrote as raw frames (for a client
        whose frames were built by hand, which h2's client state machine has not seen)."""
        for _ in range(5):
            await asyncio.sleep(0)
        data = bytes(self.transport.written)
        self.transport.written.clear()
        return frames(data)

    def of(self, kind: type, stream_id: int | None = None) -> list[Any]:
        return [
            e
            for e in self.events
            if isinstance(e, kind) and (stream_id is None or e.stream_id == stream_id)
        ]

    def body(self, stream_id: int) -> bytes:
        return b"".join(e.data for e in self.of(h2.events.DataReceived, stream_id))


def frames(raw: bytes) -> list[Frame]:
    parsed = []
    while raw:
        frame, length = Frame.parse_frame_header(memoryview(raw[:9]))
        frame.parse_body(memoryview(raw[9 : 9 + length]))
        parsed.append(frame)
        raw = raw[9 + length :]
    return parsed


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    headers = [(b"content-type", b"text/plain"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello " + scope["path"].encode()})


def test_a_stream_runs_through_the_app_with_the_http11_scope() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await hello(scope, receive, send)

    async def scenario() -> None:
        peer = Peer(app)
        peer.client.send_headers(1, [*GET[:3], (":path", "/x?q=1"), ("x-a", "1")], end_stream=True)
        peer.send()
        await peer.settle()
        (response,) = peer.of(h2.events.ResponseReceived, 1)
        assert dict(response.headers)[":status"] == "200"
        assert "connection" not in dict(response.headers)  # HTTP/1.1-only field dropped
        assert peer.body(1) == b"hello /x"
        assert peer.of(h2.events.StreamEnded, 1)
        (scope,) = seen
        assert scope["http_version"] == "2" and scope["scheme"] == "https"
        assert scope["headers"] == [(b"host", b"localhost"), (b"x-a", b"1")]
        assert scope["query_string"] == b"q=1"
        # The SETTINGS the client was told.
        remote = peer.client.remote_settings
        assert remote.max_concurrent_streams == 100
        assert remote.max_header_list_size == 64 * 1024

    run(scenario)


def test_request_body_window_reopens_only_as_the_app_reads() -> None:
    limits = Http2Limits(stream_window=65536, connection_window=1 << 20)
    release = asyncio.Event()
    received: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        while True:
            message = await receive()
            received.append(len(message["body"]))
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % sum(received)})

    async def scenario() -> None:
        peer = Peer(app, limits)
        await peer.settle()  # the server's SETTINGS (stream window 64 KiB) reach the client
        post = [(":method", "POST"), *GET[1:]]
        peer.client.send_headers(1, post)
        window = peer.client.local_flow_control_window(1)
        assert window == 65536
        for _ in range(window // 16384):
            peer.client.send_data(1, b"x" * 16384)
        peer.send()
        await peer.settle()
        # The app has not read anything: the client may not send one more byte.
        assert peer.client.local_flow_control_window(1) == 0
        assert not peer.of(h2.events.WindowUpdated, 1)
        release.set()
        await peer.settle()
        assert peer.client.local_flow_control_window(1) > 0  # reopened by the app's read
        peer.client.send_data(1, b"y" * 1000, end_stream=True)
        peer.send()
        await peer.settle()
        assert peer.body(1) == b"%d" % (65536 + 1000)

    run(scenario)


@pytest.mark.parametrize("chunk", [65536, 16384])  # 16384: one frame, split at the window edge
def test_a_client_that_does_not_read_holds_the_app_at_its_window(chunk: int) -> None:
    progress: list[int] = []
    chunks = (1 << 20) // chunk

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(chunks):  # 1 MiB
            await send({"type": "http.response.body", "body": b"z" * chunk, "more_body": True})
            progress.append(i)
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        peer = Peer(app)
        await peer.get()
        # The client's default window is 65,535 bytes: that much is sent, the app's second
        # chunk waits, nothing is buffered beyond it.
        assert len(peer.body(1)) == 65535
        assert progress == list(range(65535 // chunk))
        assert not peer.of(h2.events.StreamEnded, 1)
        # Acknowledging lets the rest through, chunk by chunk.
        for _ in range(100):
            got = sum(e.flow_controlled_length for e in peer.of(h2.events.DataReceived, 1))
            peer.client.acknowledge_received_data(got, 1)
            peer.events = [e for e in peer.events if not isinstance(e, h2.events.DataReceived)]
            peer.send()
            await peer.settle()
            if peer.of(h2.events.StreamEnded, 1):
                break
        assert progress == list(range(chunks))

    run(scenario)


def test_a_large_body_leaves_as_full_record_frames_in_bounded_writes() -> None:
    """DATA frames are framed by the protocol, not h2 (``H2Protocol.send_data``): a full one
    is exactly one TLS record, h2's windows move by the bytes sent, and a body far larger than
    ``FLUSH_BYTES`` is written in pieces of about that size, not one buffer."""
    body = bytes(range(256)) * 1200  # 300 KiB, not a multiple of the frame size

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def scenario() -> None:
        peer = Peer(app)
        peer.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        peer.client.increment_flow_control_window(1 << 24)
        peer.send()
        await peer.settle()
        window = peer.server.conn.outbound_flow_control_window
        writes: list[bytes] = []
        writelines = peer.transport.writelines

        def record(chunks: list[bytes]) -> None:
            writes.append(b"".join(chunks))
            writelines(chunks)

        peer.transport.writelines = record  # type: ignore[method-assign]
        await peer.get()
        assert peer.body(1) == body and peer.of(h2.events.StreamEnded, 1)
        assert peer.server.conn.outbound_flow_control_window == window - len(body)
        assert peer.server.conn.open_inbound_streams == 0  # h2 saw the END_STREAM go out
        data = [f for f in frames(b"".join(writes)) if isinstance(f, DataFrame)]
        assert [len(f.data) for f in data[:-1]] == [RECORD_PAYLOAD] * (len(data) - 1)
        assert 9 + RECORD_PAYLOAD == 16384  # one frame, one full TLS record
        assert ["END_STREAM" in f.flags for f in data] == [False] * (len(data) - 1) + [True]
        assert len(writes) >= len(body) // FLUSH_BYTES
        assert max(len(w) for w in writes) < FLUSH_BYTES + 16384 + 1024  # the HEADERS too

    run(scenario)


def test_small_answers_finishing_together_leave_in_one_write() -> None:
    """The HEADERS (h2's) and DATA (ours) of five small answers: one transport write, so one
    TLS record, not ten."""

    async def scenario() -> None:
        peer = Peer(hello)
        await peer.settle()
        calls: list[str] = []
        write, writelines = peer.transport.write, peer.transport.writelines

        def record_write(data: bytes) -> None:
            calls.append("write")
            write(data)

        def record_writelines(chunks: list[bytes]) -> None:
            calls.append("writelines")
            writelines(chunks)

        peer.transport.write = record_write  # type: ignore[method-assign]
        peer.transport.writelines = record_writelines  # type: ignore[method-assign]
        for stream_id in (1, 3, 5, 7, 9):
            peer.client.send_headers(stream_id, GET, end_stream=True)
        peer.send()
        calls.clear()  # what the read itself answered (SETTINGS ack)
        await peer.settle()
        assert calls == ["write"]
        assert [peer.body(i) for i in (1, 3, 5, 7, 9)] == [b"hello /"] * 5

    run(scenario)


def test_the_stream_window_bounds_a_body_when_the_connection_window_is_wide() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"w" * 200_000})

    async def scenario() -> None:
        peer = Peer(app)
        peer.client.increment_flow_control_window(1 << 24)  # the stream's stays 65,535
        await peer.get()
        assert len(peer.body(1)) == 65535 and not peer.of(h2.events.StreamEnded, 1)
        peer.client.acknowledge_received_data(65535, 1)
        peer.send()
        await peer.settle()
        assert len(peer.body(1)) == 2 * 65535

    run(scenario)


def test_transport_back_pressure_holds_send() -> None:
    sent = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})
        sent.set()

    async def scenario() -> None:
        peer = Peer(app)
        peer.server.pause_writing()
        await peer.get()
        assert not sent.is_set()  # waiting for the transport to drain
        peer.server.resume_writing()
        await peer.settle()
        assert sent.is_set() and peer.body(1) == b"ab"

    run(scenario)


def test_malformed_request_resets_only_its_stream() -> None:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await hello(scope, receive, send)

    async def scenario() -> None:
        peer = Peer(app)
        # h2's client would refuse to send these, so the block is encoded by hand.
        encoder = hpack.Encoder()
        bad = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
        bad.data = encoder.encode([*GET, ("connection", "keep-alive")])
        peer.send(bad.serialize())
        good = HeadersFrame(3, flags=["END_HEADERS", "END_STREAM"])
        good.data = encoder.encode([*GET[:3], (":path", "/ok")])
        peer.send(good.serialize())
        out = await peer.wire()
        resets = [(f.stream_id, f.error_code) for f in out if isinstance(f, RstStreamFrame)]
        assert resets == [(1, ErrorCodes.PROTOCOL_ERROR)]
        body = b"".join(f.data for f in out if isinstance(f, DataFrame) and f.stream_id == 3)
        assert calls == ["/ok"] and body == b"hello /ok"
        assert not peer.transport.closed.is_set()

    run(scenario)


def test_rapid_reset_costs_nothing_and_ends_the_connection() -> None:
    calls: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(1)
        await hello(scope, receive, send)

    async def scenario() -> None:
        peer = Peer(app, Http2Limits(reset_burst=50, reset_rate=1.0))
        raw = bytearray()
        for i in range(100):
            stream_id = 2 * i + 1
            peer.client.send_headers(stream_id, GET, end_stream=True)
            raw += peer.client.data_to_send()
            raw += RstStreamFrame(stream_id, error_code=ErrorCodes.CANCEL).serialize()
        peer.server.data_received(bytes(raw))  # one burst, one read
        await peer.settle()
        assert calls == []  # opened and reset in the same read: the app never ran
        (goaway,) = peer.of(h2.events.ConnectionTerminated)
        assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert peer.transport.closed.is_set()

    run(scenario)


def test_reset_streams_keep_counting_until_their_app_is_done() -> None:
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()

    async def scenario() -> None:
        peer = Peer(app, Http2Limits(max_concurrent_streams=2))
        for stream_id in (1, 3):
            await peer.get(stream_id)
            peer.client.reset_stream(stream_id)
            peer.send()
        assert peer.server.running == 2  # reset, but their apps still run
        await peer.get(5)
        (refused,) = peer.of(h2.events.StreamReset, 5)
        assert refused.error_code == ErrorCodes.REFUSED_STREAM
        release.set()
        await peer.settle()
        assert peer.server.running == 0 and not peer.server.streams

    run(scenario)


def test_a_stream_over_the_advertised_limit_is_refused_not_the_connection() -> None:
    release = asyncio.Event()
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await release.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        peer = Peer(app, Http2Limits(max_concurrent_streams=3))
        assert peer.client.remote_settings.max_concurrent_streams > 3  # ours not read yet
        encoder = hpack.Encoder()
        raw = bytearray()
        # A client may open streams before it has our SETTINGS (RFC 9113 §5.1.2): the one
        # over the limit is a stream error, in the same read as the others.
        for stream_id in (1, 3, 5, 7):
            frame = HeadersFrame(stream_id, flags=["END_HEADERS", "END_STREAM"])
            frame.data = encoder.encode([*GET[:3], (":path", f"/{stream_id}")])
            raw += frame.serialize()
        peer.send(bytes(raw))
        out = await peer.wire()
        settings = [f for f in out if isinstance(f, SettingsFrame) and "ACK" not in f.flags]
        assert settings[0].settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 3
        resets = [(f.stream_id, f.error_code) for f in out if isinstance(f, RstStreamFrame)]
        assert resets == [(7, ErrorCodes.REFUSED_STREAM)]
        assert not any(isinstance(f, GoAwayFrame) for f in out)
        assert calls == ["/1", "/3", "/5"] and peer.server.running == 3
        # Once those finish, new streams are taken again.
        release.set()
        await peer.wire()
        frame = HeadersFrame(9, flags=["END_HEADERS", "END_STREAM"])
        frame.data = encoder.encode([*GET[:3], (":path", "/9")])
        peer.send(frame.serialize())
        out = await peer.wire()
        assert calls[-1] == "/9" and not any(isinstance(f, RstStreamFrame) for f in out)

    run(scenario)


def test_hpack_bomb_is_a_connection_error_before_the_app() -> None:
    calls: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(1)

    async def scenario() -> None:
        peer = Peer(app, Http2Limits(max_header_bytes=4096))
        # One 2 KiB value indexed in the dynamic table, then referenced over and over: a
        # small frame that decodes to far more than max_header_bytes.
        encoder = hpack.Encoder()
        frame = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
        frame.data = encoder.encode([*GET, *[("x-bomb", "b" * 2048)] * 50])
        assert len(frame.data) < 4096
        peer.send(frame.serialize())
        await peer.settle()
        (goaway,) = peer.of(h2.events.ConnectionTerminated)
        assert goaway.error_code in (ErrorCodes.ENHANCE_YOUR_CALM, ErrorCodes.COMPRESSION_ERROR)
        assert calls == [] and peer.transport.closed.is_set()

    run(scenario)


def test_continuation_flood_is_bounded_then_the_connection_closed() -> None:
    async def scenario() -> None:
        peer = Peer(hello)
        encoder = hpack.Encoder()
        first = HeadersFrame(1, flags=["END_STREAM"])  # no END_HEADERS
        first.data = encoder.encode(GET)
        raw = bytearray(first.serialize())
        for _ in range(100):
            raw += ContinuationFrame(1, data=encoder.encode([("x-c", "c" * 100)])).serialize()
        peer.send(bytes(raw))
        await peer.settle()
        (goaway,) = peer.of(h2.events.ConnectionTerminated)
        assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
        assert peer.transport.closed.is_set()

    run(scenario)


def test_unfinished_header_block_hits_the_header_timeout() -> None:
    async def scenario() -> None:
        peer = Peer(hello, Http2Limits(header_timeout=0.05, idle_timeout=60))
        frame = HeadersFrame(1, flags=["END_STREAM"])  # never finished
        frame.data = hpack.Encoder().encode(GET)
        peer.send(frame.serialize())
        assert peer.server.header_timer is not None
        await asyncio.wait_for(peer.transport.closed.wait(), 5)
        await peer.settle()
        assert peer.of(h2.events.ConnectionTerminated)

    run(scenario)


def test_idle_connection_gets_goaway_and_is_closed() -> None:
    async def scenario() -> None:
        peer = Peer(hello, Http2Limits(idle_timeout=0.05))
        await peer.get()
        assert peer.body(1) == b"hello /"
        await asyncio.wait_for(peer.transport.closed.wait(), 5)
        await peer.settle()
        (goaway,) = peer.of(h2.events.ConnectionTerminated)
        assert goaway.error_code == ErrorCodes.NO_ERROR and goaway.last_stream_id == 1

    run(scenario)


def test_graceful_shutdown_finishes_streams_taken_and_refuses_later_ones() -> None:
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await hello(scope, receive, send)

    async def scenario() -> None:
        peer = Peer(app)
        await peer.get()
        peer.server.shutdown()
        await peer.settle()
        (goaway,) = peer.of(h2.events.ConnectionTerminated)
        assert goaway.last_stream_id == 1 and goaway.error_code == ErrorCodes.NO_ERROR
        # A stream the client opened before it saw the GOAWAY: refused, safe to retry.
        encoder = hpack.Encoder()
        late = HeadersFrame(3, flags=["END_HEADERS", "END_STREAM"])
        late.data = encoder.encode(GET)
        peer.server.data_received(late.serialize())
        assert not peer.transport.closed.is_set()
        release.set()
        await asyncio.wait_for(peer.transport.closed.wait(), 5)
        # After a GOAWAY h2's client state machine accepts no frame, so read the wire itself.
        after = frames(bytes(peer.transport.written))
        refused = [f for f in after if isinstance(f, RstStreamFrame) and f.stream_id == 3]
        assert refused and refused[0].error_code == ErrorCodes.REFUSED_STREAM
        data = [f for f in after if isinstance(f, DataFrame) and f.stream_id == 1]
        assert b"".join(f.data for f in data) == b"hello /" and "END_STREAM" in data[-1].flags
        await asyncio.sleep(0)
        assert not peer.state.connections  # uvicorn's graceful wait is over

    run(scenario)


@pytest.mark.parametrize("hot", [False, True])
def test_a_connection_made_while_the_listener_drains_answers_its_streams_then_goaway(
    hot: bool,
) -> None:
    """Also when its streams were all answered hot (no stream ever ran)."""
    app: App = HotApp(FakeHotHits(b"hello /")) if hot else hello

    async def scenario() -> None:
        peer = Peer(app)
        peer.state.draining = True  # set by gateway.server._Server.shutdown
        peer.client.send_headers(1, [*GET[:3], (":path", "/hot" if hot else "/")], True)
        peer.send()
        await asyncio.wait_for(peer.transport.closed.wait(), 5)
        # After a GOAWAY h2's client state machine accepts no frame: read the wire itself.
        wire = frames(bytes(peer.transport.written))
        (goaway,) = [f for f in wire if isinstance(f, GoAwayFrame)]
        assert goaway.last_stream_id == 1 and goaway.error_code == 0
        data = [f for f in wire if isinstance(f, DataFrame) and f.stream_id == 1]
        assert b"".join(f.data for f in data) == b"hello /" and "END_STREAM" in data[-1].flags
        await asyncio.sleep(0)
        assert not peer.state.connections  # uvicorn's graceful wait is over

    run(scenario)


def test_app_giving_up_mid_response_resets_the_stream() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})

    async def scenario() -> None:
        peer = Peer(app)
        await peer.get()
        (reset,) = peer.of(h2.events.StreamReset, 1)
        assert reset.error_code == ErrorCodes.INTERNAL_ERROR
        assert not peer.of(h2.events.StreamEnded, 1)

    run(scenario)


def test_client_reset_is_a_disconnect_for_the_app() -> None:
    got: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        got.append((await receive())["type"])

    async def scenario() -> None:
        peer = Peer(app)
        await peer.get()
        peer.client.reset_stream(1)
        peer.send()
        await peer.settle()
        assert got == ["http.disconnect"]

    run(scenario)


def test_alpn_decides_the_protocol_per_connection() -> None:
    import uvicorn
    from uvicorn.server import ServerState

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        cls = http_protocol_class(64 * 1024, Http2Limits())
        assert isinstance(cls, type) and issubclass(cls, ALPNDispatchProtocol)
        config = uvicorn.Config(hello, lifespan="off", log_config=None)
        for alpn, expected in (("h2", H2Protocol), ("http/1.1", None), (None, None)):
            state = ServerState()
            protocol = cls(config=config, server_state=state, app_state={}, _loop=loop)  # type: ignore[call-arg]
            transport = FakeTransport(loop, alpn, sni="localhost")
            transport.protocol = protocol
            protocol.connection_made(transport)
            if expected is None:
                # HTTP/1.1 stays on this very object, the listener's httptools protocol.
                assert transport.protocol is protocol and protocol in state.connections
            else:
                assert isinstance(transport.protocol, expected)
                assert transport.protocol in state.connections
                # The TLS server name reaches the scope, for validation's SNI != Host check.
                assert transport.protocol.base_scope["gateway.sni"] == "localhost"
                assert transport.protocol.base_scope["gateway.cert_names"] == (
                    "localhost",
                    "127.0.0.1",
                )
            transport.close()
            await asyncio.sleep(0)
        # Without http2 the listener's class is the plain HTTP/1.1 one.
        plain = http_protocol_class(64 * 1024)
        assert isinstance(plain, type) and not issubclass(plain, ALPNDispatchProtocol)

    run(scenario)


def test_interim_response_goes_out_before_the_final_one() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["gateway.interim"] is True
        hints = [(b"Link", b"</app.js>; rel=preload"), (b"connection", b"x")]
        await send({"type": "gateway.response.interim", "status": 103, "headers": hints})
        await hello(scope, receive, send)

    async def scenario() -> None:
        peer = Peer(app)
        await peer.get()
        (early,) = peer.of(h2.events.InformationalResponseReceived, 1)
        assert early.headers == [(":status", "103"), ("link", "</app.js>; rel=preload")]
        (final,) = peer.of(h2.events.ResponseReceived, 1)
        assert dict(final.headers)[":status"] == "200"
        assert peer.events.index(early) < peer.events.index(final)

    run(scenario)


@pytest.mark.parametrize("body", [b"", b"after"])
def test_a_header_block_over_the_frame_size_continues_in_continuation_frames(
    body: bytes,
) -> None:
    """The protocol frames response headers itself (``H2Protocol.send_headers``): a block
    over the client's SETTINGS_MAX_FRAME_SIZE is split, END_STREAM on the HEADERS frame,
    END_HEADERS on the last CONTINUATION, and the client reads back every field."""
    big = b"v" * 40000

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"x-big", big), (b"x-after", b"1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def scenario() -> None:
        peer = Peer(app)
        for stream_id in (1, 3):  # the second block refers to the table the first filled
            peer.client.send_headers(stream_id, GET, end_stream=True)
            peer.send()
            for _ in range(5):
                await asyncio.sleep(0)
            raw = bytes(peer.transport.written)
            peer.transport.written.clear()
            sent = [f for f in frames(raw) if f.stream_id == stream_id]
            kinds = [type(f) for f in sent]
            head = [HeadersFrame, ContinuationFrame, ContinuationFrame]
            assert kinds == head + ([DataFrame] if body else [])
            assert all(len(f.data) <= 16384 for f in sent)
            assert ("END_STREAM" in sent[0].flags) is not body
            assert [("END_HEADERS" in f.flags) for f in sent[:3]] == [False, False, True]
            events = peer.client.receive_data(raw)
            (response,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
            assert response.headers == [
                (":status", "200"),
                ("x-big", big.decode()),
                ("x-after", "1"),
            ]
            assert any(isinstance(e, h2.events.StreamEnded) for e in events)

    run(scenario)


def test_sending_on_a_stream_h2_has_closed_is_a_disconnect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    done: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await hello(scope, receive, send)
        done.append((await receive())["type"])

    async def scenario() -> None:
        peer = Peer(app)
        await peer.get()
        # Closed in h2 without the stream having heard of it (a reset not yet dispatched).
        peer.server.conn.reset_stream(1, ErrorCodes.CANCEL)
        release.set()
        await peer.settle()
        assert done == ["http.disconnect"]
        assert peer.server.running == 0

    run(scenario)
    assert "the app failed" not in caplog.text


def test_request_trailers_are_ignored_safely() -> None:
    bodies: list[tuple[bytes, bool]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            bodies.append((message["body"], message["more_body"]))
            if not message["more_body"]:
                break
        assert all(not name.startswith(b":") for name, _ in scope["headers"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"got it"})

    async def scenario() -> None:
        peer = Peer(app)
        peer.client.send_headers(1, [(":method", "POST"), *GET[1:], ("te", "trailers")])
        peer.client.send_data(1, b"payload")
        peer.client.send_headers(1, [("x-checksum", "abc")], end_stream=True)  # trailers
        peer.send()
        await peer.settle()
        assert b"".join(b for b, _ in bodies) == b"payload" and bodies[-1][1] is False
        assert peer.body(1) == b"got it"

    run(scenario)


def test_a_stalled_request_body_gets_408_on_its_stream() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["method"] == "GET":
            await hello(scope, receive, send)
            return
        seen.append(scope)
        while (message := await receive())["type"] == "http.request":
            seen.append(message["body"])
        seen.append(message["type"])

    async def scenario() -> None:
        peer = Peer(app, Http2Limits(body_timeout=0.05))
        peer.client.send_headers(1, [(":method", "POST"), *GET[1:]])
        peer.client.send_data(1, b"first")  # then nothing more
        peer.send()
        peer.client.send_headers(3, GET, end_stream=True)  # another stream is unaffected
        peer.send()
        for _ in range(200):
            await peer.settle()
            if peer.of(h2.events.StreamReset, 1):
                break
            await asyncio.sleep(0.01)
        (response,) = peer.of(h2.events.ResponseReceived, 1)
        assert dict(response.headers)[":status"] == "408"
        assert b"no request body bytes" in peer.body(1)
        (reset,) = peer.of(h2.events.StreamReset, 1)
        assert reset.error_code == ErrorCodes.NO_ERROR
        assert seen[1:] == [b"first", "http.disconnect"]
        assert seen[0]["gateway.closed_status"] == 408  # what the access log reports
        assert peer.body(3) == b"hello /"
        assert not peer.transport.closed.is_set()

    run(scenario)


class FakeHotHits:
    """``gateway.cache.hot.HotHits`` as the protocol sees it: ``/hot`` is a fresh hit."""

    entries = {"published": True}

    def __init__(self, body: bytes, broken: bool = False) -> None:
        self.body = body
        self.broken = broken
        self.asked: list[tuple[bytes, str, int]] = []
        self.failed = False

    def serve_fields(
        self,
        sni: Any,
        cert_names: Any,
        target: bytes,
        headers: Any,
        client: Any,
        started: float,
        *,
        method: str,
        max_body: int,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        self.asked.append((target, method, max_body))
        if self.broken:
            raise RuntimeError("a bug")
        if target != b"/hot" or (method == "GET" and len(self.body) > max_body):
            return None
        fields = [
            (b"content-type", b"text/plain"),
            (b"content-length", b"%d" % len(self.body)),
            (b"connection", b"keep-alive"),  # HTTP/1.1 only: never sent over HTTP/2
        ]
        return 200, fields, b"" if method == "HEAD" else self.body

    def fail(self) -> None:
        self.failed = True


class HotApp:
    """An app (an ``AppSwitch`` look-alike: ``current.hot``) that records what reaches it."""

    def __init__(self, hot: FakeHotHits) -> None:
        self.current = SimpleNamespace(hot=hot)
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await hello(scope, receive, send)


def test_a_hot_hit_is_answered_by_the_protocol_without_the_app() -> None:
    body = bytes(range(256)) * 160  # 40 KiB: three DATA frames
    app = HotApp(FakeHotHits(body))

    async def scenario() -> None:
        peer = Peer(app)
        peer.client.send_headers(1, [*GET[:3], (":path", "/hot")], end_stream=True)
        peer.client.send_headers(3, [(":method", "HEAD"), *GET[1:3], (":path", "/hot")], True)
        peer.client.send_headers(5, [*GET[:3], (":path", "/cold")], end_stream=True)
        peer.send()
        await peer.settle()
        assert app.paths == ["/cold"]  # only the request without a hot answer
        (hit,) = peer.of(h2.events.ResponseReceived, 1)
        assert dict(hit.headers) == {
            ":status": "200",
            "content-type": "text/plain",
            "content-length": str(len(body)),
        }
        assert peer.body(1) == body and peer.of(h2.events.StreamEnded, 1)
        (head,) = peer.of(h2.events.ResponseReceived, 3)
        assert dict(head.headers)["content-length"] == str(len(body))
        assert peer.body(3) == b"" and peer.of(h2.events.StreamEnded, 3)
        assert peer.body(5) == b"hello /cold"
        assert peer.server.conn.open_inbound_streams == 0 and not peer.server.streams

    run(scenario)


def test_a_hot_body_over_the_clients_window_takes_the_full_path() -> None:
    app = HotApp(FakeHotHits(b"x" * 70000))  # over the 65,535-byte default stream window

    async def scenario() -> None:
        peer = Peer(app)
        peer.client.send_headers(1, [*GET[:3], (":path", "/hot")], end_stream=True)
        peer.send()
        await peer.settle()
        assert app.current.hot.asked == [(b"/hot", "GET", 65535)]
        assert app.paths == ["/hot"] and peer.body(1) == b"hello /hot"

    run(scenario)


def test_a_failing_hot_lookup_turns_hot_hits_off_and_the_app_answers() -> None:
    app = HotApp(FakeHotHits(b"x", broken=True))

    async def scenario() -> None:
        peer = Peer(app)
        peer.client.send_headers(1, [*GET[:3], (":path", "/hot")], end_stream=True)
        peer.send()
        await peer.settle()
        assert app.current.hot.failed and app.paths == ["/hot"]
        assert peer.body(1) == b"hello /hot"

    run(scenario)


def test_hot_answers_restart_the_idle_wait() -> None:
    """A connection busy with hot answers only is not idle: each read that answered one
    starts the idle wait again (no stream is ever opened), by moving the deadline: the
    timer armed at the start stays."""
    app = HotApp(FakeHotHits(b"x"))

    async def scenario() -> None:
        peer = Peer(app, Http2Limits(idle_timeout=30))
        first, deadline = peer.server.idle_timer, peer.server.idle_deadline
        assert first is not None
        await asyncio.sleep(0.01)  # the loop's clock moves on
        peer.client.send_headers(1, [*GET[:3], (":path", "/hot")], end_stream=True)
        peer.send()
        assert peer.server.idle_timer is first and not first.cancelled()
        assert peer.server.idle_deadline >= deadline + 0.01

    run(scenario)


def test_a_read_after_the_idle_timer_was_armed_postpones_the_close() -> None:
    """The idle timer fires at the first deadline, finds a later one (a hot answer moved
    it) and sleeps again: the connection is closed idle_timeout after its last read."""
    app = HotApp(FakeHotHits(b"x"))

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        peer = Peer(app, Http2Limits(idle_timeout=0.2))
        await asyncio.sleep(0.1)
        peer.client.send_headers(1, [*GET[:3], (":path", "/hot")], end_stream=True)
        peer.send()
        last_read = loop.time()
        await asyncio.wait_for(peer.transport.closed.wait(), 5)
        assert loop.time() - last_read >= 0.19  # not at the first deadline, 0.1 s earlier
        await peer.settle()
        (goaway,) = peer.of(h2.events.ConnectionTerminated)
        assert goaway.error_code == ErrorCodes.NO_ERROR

    run(scenario)


class FakeLane:
    """``gateway.express.ExpressLane`` as the protocol sees it: it takes every GET for
    ``/lane/...`` and answers when the test says, through the stream's ``write``."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.taken: dict[int, Any] = {}
        self.failed = False

    def start(self, stream: Any, protocol: Any, app: Any) -> bool:
        if self.broken:
            raise RuntimeError("a bug")
        if not stream.scope["path"].startswith("/lane"):
            return False
        self.taken[stream.stream_id] = (stream, protocol, app)
        return True

    def answer(self, stream_id: int, body: bytes) -> bool:
        """As ``Express._advance`` then ``answer``: False when the protocol says the full
        path must answer (and it is handed over)."""
        stream, protocol, app = self.taken.pop(stream_id)
        if protocol.express_blocked(stream, len(body)):
            protocol.start_full_path(stream, app)
            return False
        fields = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        stream.respond(200, fields, body)
        return True

    def fail(self) -> None:
        self.failed = True


class LaneApp(HotApp):
    def __init__(self, lane: FakeLane) -> None:
        self.current = SimpleNamespace(hot=None, express=lane)
        self.paths = []


def test_a_stream_on_the_express_lane_has_no_task_and_counts_as_running_until_answered() -> None:
    lane = FakeLane()
    app = LaneApp(lane)

    async def scenario() -> None:
        peer = Peer(app)
        for stream_id, path in ((1, "/lane/a"), (3, "/lane/b"), (5, "/other")):
            peer.client.send_headers(stream_id, [*GET[:3], (":path", path)], end_stream=True)
        peer.send()
        await peer.settle()
        assert sorted(lane.taken) == [1, 3] and app.paths == ["/other"]
        assert peer.server.running == 2 and not peer.state.tasks
        assert lane.answer(3, b"three") and lane.answer(1, b"")
        await peer.settle()
        assert peer.body(3) == b"three" and peer.body(1) == b""
        for stream_id in (1, 3):
            (response,) = peer.of(h2.events.ResponseReceived, stream_id)
            assert dict(response.headers)[":status"] == "200"
            assert peer.of(h2.events.StreamEnded, stream_id)
        assert peer.server.running == 0 and peer.server.streams == {}
        assert peer.server.idle_timer is not None  # idle again: the idle wait restarted
        assert not peer.of(h2.events.StreamReset)

    run(scenario)


def test_a_body_over_the_clients_window_is_handed_to_the_full_path() -> None:
    lane = FakeLane()
    app = LaneApp(lane)

    async def scenario() -> None:
        peer = Peer(app)
        peer.request(1, "/lane/big")
        await peer.settle()
        window = peer.server.conn.local_flow_control_window(1)
        assert not lane.answer(1, b"x" * (window + 1))  # handed over: the app's task answers
        await peer.settle()
        assert app.paths == ["/lane/big"] and peer.body(1) == b"hello /lane/big"
        assert peer.server.running == 0

    run(scenario)


def test_a_stream_reset_while_on_the_lane_is_finished_once_when_the_lane_is_done() -> None:
    lane = FakeLane()

    async def scenario() -> None:
        peer = Peer(LaneApp(lane))
        peer.request(1, "/lane/x")
        peer.client.reset_stream(1)
        peer.send()
        assert peer.server.running == 1  # the lane still holds its upstream exchange
        stream = lane.taken[1][0]
        assert lane.answer(1, b"late")  # written to a stream that is gone: nothing sent
        peer.server.express_done(stream)  # a second end changes nothing
        await peer.settle()
        assert peer.server.running == 0 and peer.server.streams == {}
        assert not peer.of(h2.events.ResponseReceived)
        assert not peer.transport.closed.is_set()

    run(scenario)


def test_an_aborted_lane_answer_resets_its_stream_and_a_broken_lane_turns_off() -> None:
    lane = FakeLane()

    async def scenario() -> None:
        peer = Peer(LaneApp(lane))
        peer.request(1, "/lane/x")
        stream, protocol, _ = lane.taken.pop(1)
        protocol.abort_response(stream)
        await peer.settle()
        (reset,) = peer.of(h2.events.StreamReset, 1)
        assert reset.error_code == ErrorCodes.INTERNAL_ERROR
        assert peer.server.running == 0

        broken = FakeLane(broken=True)
        app = LaneApp(broken)
        other = Peer(app)
        await other.get()
        assert broken.failed and app.paths == ["/"]
        assert other.body(1) == b"hello /"

    run(scenario)
