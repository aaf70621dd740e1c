"""The WebSocket tunnel driven in-process with mock transports (no sockets): bytes relayed
both ways, back-pressure propagated to the other side, either side closing closes the other,
the idle timer, and the handler's limit, decline and cancellation paths."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.errors import TooManyTunnels
from gateway.handlers.websocket import Tunnel, WebSocketHandler, switching_protocols_head


class MockTransport:
    """Just enough of asyncio.Transport: records writes, reading state and closing; closing
    reports connection_lost to the protocol on the next loop iteration, as asyncio does."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, reading: bool = False) -> None:
        self.loop = loop
        self.written = bytearray()
        self.reading = reading  # handed over paused, as take_over/detach do
        self.closing = False
        self.protocol: asyncio.Protocol | None = None

    def write(self, data: bytes) -> None:
        if self.closing:
            return  # asyncio's transports drop (or only log) writes once closing
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            assert self.protocol is not None
            self.loop.call_soon(self.protocol.connection_lost, None)


def run(scenario: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario(asyncio.get_running_loop())

    asyncio.run(main())


def make_tunnel(
    loop: asyncio.AbstractEventLoop, idle_timeout: float = 60.0
) -> tuple[Tunnel, MockTransport, MockTransport]:
    client, upstream = MockTransport(loop), MockTransport(loop)
    tunnel = Tunnel(client, upstream, idle_timeout, loop)  # type: ignore[arg-type]
    return tunnel, client, upstream


def test_start_takes_both_transports_and_sends_what_each_side_already_sent() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        tunnel, client, upstream = make_tunnel(loop)
        tunnel.start(b"HTTP/1.1 101 ...\r\n\r\n<frame from upstream>", b"<frame from client>")
        assert client.protocol is tunnel.client and upstream.protocol is tunnel.upstream
        assert client.written == upstream.written == b""  # held until the iteration ends
        await asyncio.sleep(0)
        assert bytes(client.written) == b"HTTP/1.1 101 ...\r\n\r\n<frame from upstream>"
        assert bytes(upstream.written) == b"<frame from client>"
        assert client.reading and upstream.reading
        tunnel.close()

    run(scenario)


def test_bytes_are_relayed_both_ways_and_counted() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        tunnel, client, upstream = make_tunnel(loop)
        tunnel.start(b"", b"")
        tunnel.client.data_received(b"ping")
        tunnel.upstream.data_received(b"pong")
        tunnel.upstream.data_received(b"!!")
        await asyncio.sleep(0)
        assert bytes(upstream.written) == b"ping"
        assert bytes(client.written) == b"pong!!"
        assert tunnel.bytes_to_client == 6
        tunnel.close()

    run(scenario)


@pytest.mark.parametrize("full", ["client", "upstream"])
def test_a_full_write_buffer_pauses_reading_on_the_other_side(full: str) -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        tunnel, client, upstream = make_tunnel(loop)
        tunnel.start(b"", b"")
        end, other = (tunnel.client, upstream) if full == "client" else (tunnel.upstream, client)
        end.pause_writing()
        assert not other.reading
        end.resume_writing()
        assert other.reading
        tunnel.close()

    run(scenario)


def test_resume_never_restarts_reading_on_a_closing_transport() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        tunnel, client, upstream = make_tunnel(loop)
        tunnel.start(b"", b"")
        tunnel.client.pause_writing()
        upstream.closing = True  # closing, connection_lost not reported yet
        tunnel.client.resume_writing()
        assert not upstream.reading
        upstream.closing = False
        tunnel.close()

    run(scenario)


@pytest.mark.parametrize("side", ["client", "upstream"])
def test_either_side_closing_closes_the_other(side: str) -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        tunnel, client, upstream = make_tunnel(loop)
        tunnel.start(b"", b"")
        end = tunnel.client if side == "client" else tunnel.upstream
        assert not end.eof_received()  # a half-close ends the transport, hence the tunnel
        end.connection_lost(ConnectionResetError() if side == "client" else None)
        assert client.closing and upstream.closing
        await asyncio.wait_for(tunnel.done, 1)
        assert not tunnel.idle_closed
        await asyncio.sleep(0)  # the other side's connection_lost arrives: nothing breaks
        assert tunnel._timer.cancelled()

    run(scenario)


def test_a_transport_closed_during_the_handshake_ends_the_tunnel_at_start() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        tunnel, client, upstream = make_tunnel(loop)
        client.closing = True  # the client left while the upstream was answering 101
        tunnel.start(b"HTTP/1.1 101 ...\r\n\r\n", b"")
        assert upstream.closing
        assert tunnel.done.done()

    run(scenario)


def test_idle_tunnel_is_closed_after_the_idle_timeout() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        tunnel, client, upstream = make_tunnel(loop, idle_timeout=0.05)
        tunnel.start(b"", b"")
        started = loop.time()
        await asyncio.wait_for(tunnel.done, 1)
        assert loop.time() - started >= 0.05
        assert tunnel.idle_closed and client.closing and upstream.closing

    run(scenario)


@pytest.mark.parametrize("talker", ["client", "upstream"])
def test_traffic_in_either_direction_keeps_a_tunnel_open(talker: str) -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        tunnel, _, _ = make_tunnel(loop, idle_timeout=0.1)
        tunnel.start(b"", b"")
        end = tunnel.client if talker == "client" else tunnel.upstream
        for _ in range(8):  # 0.24 s in all, more than twice the timeout
            await asyncio.sleep(0.03)
            end.data_received(b"x")
        assert not tunnel.done.done()
        quiet_from = loop.time()
        await asyncio.wait_for(tunnel.done, 1)  # then silence: closed a timeout later
        assert tunnel.idle_closed
        assert loop.time() - quiet_from >= 0.1 - 0.03

    run(scenario)


def test_the_101_head_keeps_every_upstream_header_as_sent() -> None:
    head = switching_protocols_head(
        [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            (b"sec-websocket-extensions", b"permessage-deflate; server_max_window_bits=11"),
        ]
    )
    assert head == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"upgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"sec-websocket-extensions: permessage-deflate; server_max_window_bits=11\r\n\r\n"
    )


# --- the handler, with a fake proxy and a fake upgrade handle -----------------------------------


class FakeSwitchedConnection:
    def __init__(self, transport: MockTransport) -> None:
        self.head = SimpleNamespace(headers=[(b"upgrade", b"websocket")])
        self.transport = transport

    def detach(self) -> tuple[MockTransport, bytes]:
        return self.transport, b"<early upstream frame>"


class FakeProxy:
    def __init__(self, answer: FakeSwitchedConnection | None) -> None:
        self.answer = answer
        self.handshakes = 0

    async def handshake(self, request: Any) -> FakeSwitchedConnection | None:
        self.handshakes += 1
        return self.answer


class FakeUpgrade:
    def __init__(self, transport: MockTransport) -> None:
        self.transport = transport

    def take_over(self) -> tuple[MockTransport, bytes]:
        return self.transport, b"<early client frame>"


def handler_for(proxy: FakeProxy, *, max_tunnels: int = 10) -> WebSocketHandler:
    gateway = SimpleNamespace(websocket_idle_timeout=60.0, max_websocket_tunnels=max_tunnels)
    return WebSocketHandler(SimpleNamespace(gateway=gateway), proxy)  # type: ignore[arg-type]


def fake_request(client: MockTransport) -> Any:
    exchange = SimpleNamespace(
        status=0, response_started=False, bytes_sent=0, line=("GET", "/chat")
    )
    return SimpleNamespace(scope={"gateway.upgrade": FakeUpgrade(client)}, exchange=exchange)


def test_handler_runs_a_tunnel_until_a_side_closes() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client, upstream = MockTransport(loop), MockTransport(loop)
        handler = handler_for(FakeProxy(FakeSwitchedConnection(upstream)))
        request = fake_request(client)
        task = asyncio.create_task(handler(request))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the tunnel's first writes leave at the end of an iteration
        assert len(handler.tunnels) == 1
        assert client.written.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert client.written.endswith(b"\r\n\r\n<early upstream frame>")
        assert bytes(upstream.written) == b"<early client frame>"
        (tunnel,) = handler.tunnels
        tunnel.upstream.data_received(b"12345")
        tunnel.upstream.connection_lost(None)
        await asyncio.wait_for(task, 1)
        assert not handler.tunnels
        assert (request.exchange.status, request.exchange.bytes_sent) == (101, 5)

    run(scenario)


def test_handler_cancelled_by_shutdown_closes_its_tunnel() -> None:
    """Graceful shutdown ran out of time and cancelled the request task: no tunnel outlives it."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client, upstream = MockTransport(loop), MockTransport(loop)
        handler = handler_for(FakeProxy(FakeSwitchedConnection(upstream)))
        task = asyncio.create_task(handler(fake_request(client)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.closing and upstream.closing
        assert not handler.tunnels

    run(scenario)


def test_handler_over_the_limit_refuses_before_any_handshake() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        proxy = FakeProxy(FakeSwitchedConnection(MockTransport(loop)))
        handler = handler_for(proxy, max_tunnels=1)
        first = asyncio.create_task(handler(fake_request(MockTransport(loop))))
        await asyncio.sleep(0)
        with pytest.raises(TooManyTunnels) as refused:
            await handler(fake_request(MockTransport(loop)))
        assert refused.value.status == 503
        assert (b"retry-after", b"1") in refused.value.response_headers()
        assert proxy.handshakes == 1
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first

    run(scenario)


def test_handler_leaves_a_declined_handshake_to_the_proxy() -> None:
    """The upstream answered something else than 101: that answer was already relayed by the
    proxy, so no tunnel starts and the client's transport is left alone."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = MockTransport(loop)
        handler = handler_for(FakeProxy(None))
        request = fake_request(client)
        await handler(request)
        assert not handler.tunnels and not client.written and not client.closing
        assert request.exchange.status == 0

    run(scenario)


class SlowProxy(FakeProxy):
    """A handshake that takes a while: the upstream has not answered yet."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(None)
        self.loop = loop
        self.answer_now = asyncio.Event()

    async def handshake(self, request: Any) -> FakeSwitchedConnection | None:
        self.handshakes += 1
        await self.answer_now.wait()
        return FakeSwitchedConnection(MockTransport(self.loop))


def test_concurrent_handshakes_cannot_exceed_the_limit() -> None:
    """Three upgrades at once with room for two: the slot is taken when the handshake starts,
    not when the tunnel opens, so exactly one is refused."""

    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        proxy = SlowProxy(loop)
        handler = handler_for(proxy, max_tunnels=2)  # type: ignore[arg-type]
        tasks = [asyncio.create_task(handler(fake_request(MockTransport(loop)))) for _ in range(3)]
        await asyncio.sleep(0)
        proxy.answer_now.set()
        await asyncio.sleep(0.01)
        refused = [t for t in tasks if t.done() and isinstance(t.exception(), TooManyTunnels)]
        assert len(refused) == 1 and proxy.handshakes == 2
        assert len(handler.tunnels) == 2
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    run(scenario)
