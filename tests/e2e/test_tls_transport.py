"""The HTTPS listener's TLS transport (``gateway.tls.transport``) on real loopback sockets.

A recording protocol stands in for the listener's; clients are asyncio's own TLS streams or
raw sockets, on uvloop as in the gateway.  Every wait is bounded (``asyncio.wait_for``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import ssl
import struct
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

import gateway.tls.transport
from gateway.config import TLSSettings
from gateway.tls.certs import CertificatePaths, ensure_certificates
from gateway.tls.context import client_ssl_context, server_ssl_context
from gateway.tls.transport import HIGH_WATER, TLSServer, TLSTransport

WAIT = 10.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    tls = TLSSettings(dir=tmp_path_factory.mktemp("tls") / "certs")
    return ensure_certificates(tls, ("localhost",))


class Protocols(list["Recorder"]):
    """The protocols the server made, in order; ``nth`` waits for one."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    async def nth(self, index: int) -> Recorder:
        while len(self) <= index:
            self.changed.clear()
            await self.changed.wait()
        await self[index].made.wait()
        return self[index]


class Recorder(asyncio.Protocol):
    """Records what the transport calls; ``on_data`` decides what to do with each read."""

    def __init__(self, on_data: Callable[[Recorder, bytes], None] | None = None) -> None:
        self.transport: TLSTransport | None = None
        self.data = bytearray()
        self.events: list[str] = []
        self.on_data = on_data
        self.made = asyncio.Event()
        self.lost = asyncio.Event()
        self.received = asyncio.Event()
        self.lost_with: BaseException | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")
        self.made.set()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.received.set()
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self) -> None:
        self.events.append("eof")

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost_with = exc
        self.lost.set()


def serve(
    certs: CertificatePaths,
    scenario: Callable[[TLSServer, Protocols, int], Awaitable[None]],
    on_data: Callable[[Recorder, bytes], None] | None = None,
    handshake_timeout: float | None = 5.0,
) -> None:
    """Run ``scenario(server, protocols, port)`` on uvloop against a TLSServer on a free port."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        protocols = Protocols()

        def factory() -> Recorder:
            protocols.append(Recorder(on_data))
            protocols.changed.set()
            return protocols[-1]

        sock = socket.create_server(("127.0.0.1", 0))
        context = server_ssl_context(certs.cert_file, certs.key_file, http2=True)
        server = TLSServer(loop, factory, sock, context, handshake_timeout)
        try:
            await asyncio.wait_for(scenario(server, protocols, sock.getsockname()[1]), WAIT)
        finally:
            server.close()
            for protocol in protocols:
                if protocol.transport is not None:
                    protocol.transport.abort()

    uvloop.run(main())


def client_context(certs: CertificatePaths) -> ssl.SSLContext:
    assert certs.ca_file is not None
    return client_ssl_context(certs.ca_file)


async def connect(
    certs: CertificatePaths, port: int, alpn: tuple[str, ...] = ("h2", "http/1.1")
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = client_context(certs)
    context.set_alpn_protocols(list(alpn))
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )


async def opened(
    certs: CertificatePaths, port: int, protocols: Protocols, first: bytes = b"go"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Recorder, TLSTransport]:
    """A client connection whose ``first`` bytes the server's protocol has received."""
    index = len(protocols)  # before connecting: the server may be done first
    reader, writer = await connect(certs, port)
    writer.write(first)
    protocol = await protocols.nth(index)
    await protocol.received.wait()
    assert protocol.transport is not None
    return reader, writer, protocol, protocol.transport


def test_a_connection_gets_the_protocol_after_the_handshake_with_asyncios_extra_info(
    certs: CertificatePaths,
) -> None:
    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        reader, writer, protocol, transport = await opened(certs, port, protocols, b"ping")
        assert bytes(protocol.data) == b"ping"
        assert transport.get_extra_info("peername") == writer.get_extra_info("sockname")
        assert transport.get_extra_info("sockname") == ("127.0.0.1", port)
        assert transport.get_extra_info("socket").getpeername() == transport.get_extra_info(
            "peername"
        )
        ssl_object = transport.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject) and ssl_object.server_side
        assert ssl_object.selected_alpn_protocol() == "h2"  # the client offers h2 first
        assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        assert transport.get_extra_info("sslcontext") is server.context
        transport.write(b"pong")
        assert await reader.readexactly(4) == b"pong"
        writer.close()
        await protocols[0].lost.wait()
        assert protocols[0].events == ["made", "eof", "lost"]
        assert protocols[0].lost_with is None

    serve(certs, scenario)


def test_a_large_response_arrives_whole_through_the_write_buffer_and_flow_control(
    certs: CertificatePaths,
) -> None:
    """4 MiB written at once to a client that is not reading: most of it waits in the
    transport's buffer (pause_writing), and drains as the client reads (resume_writing)."""
    body = bytes(range(256)) * (16 * 1024)

    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        reader, writer, _, transport = await opened(certs, port, protocols, b"go")
        transport.write(body[:1000])
        transport.write(body[1000:])  # joins the buffer behind the first write's rest
        assert transport.get_write_buffer_size() > HIGH_WATER
        assert protocols[0].events == ["made", "pause_writing"]
        received = await reader.readexactly(len(body))
        assert received == body
        assert transport.get_write_buffer_size() == 0
        assert protocols[0].events == ["made", "pause_writing", "resume_writing"]
        writer.close()

    serve(certs, scenario)


def test_a_close_with_unread_bytes_still_delivers_the_response(certs: CertificatePaths) -> None:
    """The protocol answers the first bytes and closes while the client is still sending:
    closing a socket with unread bytes would reset the connection and could destroy the
    response in flight.  The transport sends close_notify and a FIN, then drains."""
    body = b"r" * (4 * 1024 * 1024)

    def answer_and_close(protocol: Recorder, data: bytes) -> None:
        if protocol.transport is not None and not protocol.transport.is_closing():
            protocol.transport.pause_reading()
            protocol.transport.write(body)
            protocol.transport.close()

    def client(port: int) -> bytes:
        """A blocking client that sends on, then reads to the end."""
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        with client_context(certs).wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"first" + b"x" * (256 * 1024))  # all but 5 bytes never read
            received = bytearray()
            while chunk := sock.recv(1024 * 1024):
                received += chunk
            return bytes(received)

    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        received = await asyncio.to_thread(client, port)
        assert len(received) == len(body) and received == body
        await protocols[0].lost.wait()
        assert protocols[0].lost_with is None

    serve(certs, scenario, on_data=answer_and_close)


class ClosedSockets(list[TLSTransport]):
    """The transports whose socket closed (``_close_socket``), with an event per close."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.event = asyncio.Event()
        close_socket = TLSTransport._close_socket

        def recorded(transport: TLSTransport) -> None:
            close_socket(transport)
            self.append(transport)
            self.event.set()

        monkeypatch.setattr(TLSTransport, "_close_socket", recorded)


def test_a_client_that_closed_first_has_its_socket_closed_at_once(
    certs: CertificatePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client read its answer and closed (close_notify and a FIN, no reset) before the
    server closes: no linger, no poll, no timer, the socket closes within ``close()``."""
    monkeypatch.setattr(gateway.tls.transport, "LINGER", 60.0)

    def client(port: int) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        tls = client_context(certs).wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"go")
        assert tls.recv(3) == b"bye"
        tls.setblocking(False)
        with pytest.raises(ssl.SSLWantReadError):
            tls.unwrap()  # close_notify sent; the server's is not waited for
        tls.shutdown(socket.SHUT_WR)  # and a FIN
        return tls

    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        closed = ClosedSockets(monkeypatch)
        answered = asyncio.create_task(asyncio.to_thread(client, port))
        protocol = await protocols.nth(0)
        await protocol.received.wait()
        transport = protocol.transport
        assert transport is not None
        transport.pause_reading()  # the client's close_notify and FIN stay unread
        transport.write(b"bye")
        tls = await answered
        transport.close()
        assert closed == [transport] and transport._timer is None
        tls.close()

    serve(certs, scenario)


def test_a_reset_while_lingering_closes_the_socket_at_once(
    certs: CertificatePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's close_notify and a reset arrive together while the server lingers:
    uvloop runs the read callback once for such an error event and stops polling, so the
    drain must read to the reset then, not wait LINGER (60 s here) for a second wake-up.
    (wrk's new connections ended this way: 5,700 sockets held open per gateway process.)"""
    monkeypatch.setattr(gateway.tls.transport, "LINGER", 60.0)
    client_done = threading.Event()

    def answer_and_close(protocol: Recorder, data: bytes) -> None:
        assert protocol.transport is not None
        protocol.transport.write(b"bye")
        protocol.transport.close()  # close_notify and a FIN; lingering from here
        # Hold the loop until the client is gone, so both arrive before its next poll.
        assert client_done.wait(WAIT)

    def client(port: int) -> bytes:
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        try:
            tls = client_context(certs).wrap_socket(raw, server_hostname="localhost")
            tls.sendall(b"go")
            received = bytearray()
            while chunk := tls.recv(1024):  # to the server's close_notify
                received += chunk
            plain = tls.unwrap()  # the client's close_notify
            plain.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            plain.close()  # and a reset
            return bytes(received)
        finally:
            raw.close()
            client_done.set()

    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        closed = ClosedSockets(monkeypatch)
        answer = asyncio.create_task(asyncio.to_thread(client, port))
        protocol = await protocols.nth(0)
        assert await answer == b"bye"
        await asyncio.wait_for(closed.event.wait(), 2.0)
        assert closed == [protocol.transport]

    serve(certs, scenario, on_data=answer_and_close)


def test_a_lingering_close_reads_a_bounded_amount_per_wake_up(
    certs: CertificatePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that goes on sending after the server closed must not hold the event loop
    (nor keep the linger's timer from firing): each wake-up reads at most DRAIN_READS times,
    and leaves the rest for the next one."""
    monkeypatch.setattr(gateway.tls.transport, "DRAIN_READS", 1)
    filled, done = threading.Event(), threading.Event()
    left_unread: list[bool] = []
    drain = TLSTransport._drain

    def recorded(transport: TLSTransport) -> None:
        drain(transport)
        if not left_unread and not transport._closed:
            try:
                left_unread.append(
                    bool(transport._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
                )
            except BlockingIOError:
                left_unread.append(False)

    monkeypatch.setattr(TLSTransport, "_drain", recorded)

    def answer_and_close(protocol: Recorder, data: bytes) -> None:
        assert protocol.transport is not None and filled.wait(WAIT)
        protocol.transport.close()  # the client's bytes fill the socket: the drain starts

    def client(port: int) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        with client_context(certs).wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"go")
            tls.setblocking(False)
            chunk = b"x" * 16384
            with contextlib.suppress(ssl.SSLWantWriteError, BlockingIOError):
                for _ in range(10_000):  # until the socket buffers on both sides are full
                    tls.send(chunk)
            filled.set()
            assert done.wait(WAIT)

    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        sent = asyncio.create_task(asyncio.to_thread(client, port))
        protocol = await protocols.nth(0)
        await protocol.lost.wait()
        done.set()
        await sent
        assert left_unread == [True]

    serve(certs, scenario, on_data=answer_and_close)


def test_pause_reading_holds_the_data_until_resume(certs: CertificatePaths) -> None:
    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        reader, writer, protocol, transport = await opened(certs, port, protocols, b"one")
        transport.pause_reading()
        assert not transport.is_reading()
        protocol.received.clear()
        writer.write(b"two")
        await writer.drain()
        # The next request over the same connection proves the loop ran past "two".
        transport.write(b"ack")
        assert await reader.readexactly(3) == b"ack"
        await asyncio.sleep(0.05)  # "two" is in the socket; nothing may deliver it
        assert bytes(protocol.data) == b"one"
        transport.resume_reading()
        await protocol.received.wait()
        assert bytes(protocol.data) == b"onetwo"
        writer.close()

    serve(certs, scenario)


def test_abort_drops_the_buffer_and_resets(certs: CertificatePaths) -> None:
    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        reader, writer, _, transport = await opened(certs, port, protocols, b"go")
        transport.write(b"z" * (8 * 1024 * 1024))
        transport.abort()
        assert transport.is_closing() and transport.get_write_buffer_size() == 0
        await protocols[0].lost.wait()
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
            await reader.readexactly(8 * 1024 * 1024)
        writer.close()

    serve(certs, scenario)


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00\x01"], ids=["nothing", "half-hello"])
def test_a_handshake_that_never_completes_is_closed_at_the_timeout(
    certs: CertificatePaths, sent: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        started = loop.time()
        assert await reader.read() == b""
        elapsed = loop.time() - started
        assert 0.2 <= elapsed < 2.0
        assert protocols == []
        writer.close()

    with caplog.at_level(logging.DEBUG, logger="gateway.tls"):
        serve(certs, scenario, handshake_timeout=0.3)
    assert "timed out" in caplog.text


def test_a_failed_handshake_is_closed_and_logged(
    certs: CertificatePaths, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x16\x03\x01\x00\x05garbage")  # a record that is no ClientHello
        try:  # closed at once: an unread rest makes it a reset
            assert await reader.read() == b""
        except ConnectionResetError:
            pass
        writer.close()
        _, writer, _, _ = await opened(certs, port, protocols, b"ok")  # still accepting
        assert len(protocols) == 1
        writer.close()

    with caplog.at_level(logging.DEBUG, logger="gateway.tls"):
        serve(certs, scenario)
    assert "TLS handshake with" in caplog.text and "failed" in caplog.text


def test_plain_http_on_the_tls_port_gets_a_400_that_says_so(certs: CertificatePaths) -> None:
    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl\r\n\r\n")
        answer = await reader.read()  # to the end: the 400 is not cut by a reset
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"connection: close" in head and b"content-length: %d" % len(body) in head
        assert b"plain HTTP request was sent to an HTTPS port" in body
        assert protocols == []

    serve(certs, scenario)


def test_closing_the_server_stops_accepting_and_keeps_connections(
    certs: CertificatePaths,
) -> None:
    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        reader, writer, _, transport = await opened(certs, port, protocols, b"a")
        server.close()
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        transport.write(b"still here")
        assert await reader.readexactly(10) == b"still here"
        writer.close()

    serve(certs, scenario)


def test_set_protocol_moves_the_reads(certs: CertificatePaths) -> None:
    """The HTTP/2 dispatch and the WebSocket tunnel hand the transport to another protocol."""

    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        reader, writer, _, transport = await opened(certs, port, protocols, b"first")
        other = Recorder()
        transport.set_protocol(other)
        assert transport.get_protocol() is other
        writer.write(b"second")
        await other.received.wait()
        assert bytes(other.data) == b"second" and bytes(protocols[0].data) == b"first"
        writer.close()
        await other.lost.wait()
        assert not protocols[0].lost.is_set()

    serve(certs, scenario)


def test_the_sni_callback_sees_the_connection_and_can_switch_its_context(
    certs: CertificatePaths, tmp_path: Path
) -> None:
    """gateway.tls.context's SNI callback records the server name on the SSLObject the
    listener reads (``gateway_sni``) and switches certificates by setting ``context``."""
    seen: list[Any] = []

    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        other = server_ssl_context(certs.cert_file, certs.key_file)  # no h2 offered

        def select(conn: Any, name: str | None, context: ssl.SSLContext) -> None:
            conn.gateway_sni = name
            conn.context = other
            seen.append(conn)

        server.context.sni_callback = select
        reader, writer, _, transport = await opened(certs, port, protocols, b"x")
        ssl_object = transport.get_extra_info("ssl_object")
        assert seen == [ssl_object] and ssl_object.gateway_sni == "localhost"
        assert ssl_object.context is other
        assert ssl_object.selected_alpn_protocol() == "http/1.1"
        writer.close()

    serve(certs, scenario)


def test_running_out_of_descriptors_pauses_accepting_and_recovers(
    certs: CertificatePaths, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMFILE at accept: logged, accepting pauses (the listener would stay readable and spin),
    and resumes by itself once descriptors are free again."""
    monkeypatch.setattr(gateway.tls.transport, "ACCEPT_RETRY", 0.2)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def scenario(server: TLSServer, protocols: Protocols, port: int) -> None:
        # Connected, waiting in the backlog: the loop has not run the accept yet.
        held = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(4)]
        fillers: list[int] = []
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        try:
            while True:  # the free numbers below the limit, taken: accept must fail
                try:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    break
            await asyncio.sleep(0.1)  # the loop accepts, fails; a listener polled now spins
            assert "Too many open files" in caplog.text
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            for sock in held:
                sock.close()
        reader, writer = await connect(certs, port)  # accepting again, by itself
        writer.write(b"back")
        protocol = await protocols.nth(0)
        await protocol.received.wait()
        assert bytes(protocol.data) == b"back"
        writer.close()

    with caplog.at_level(logging.DEBUG, logger="gateway.tls"):
        serve(certs, scenario, handshake_timeout=0.5)
    assert caplog.text.count("accepting a TLS connection failed") <= 2  # paused, no spin
