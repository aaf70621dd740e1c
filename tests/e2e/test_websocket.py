"""WebSocket upgrades through the real gateway to a real WebSocket upstream
(``tests/support/ws_upstream.py``, the ``websockets`` library), over wss:// with the gateway's
own CA: the tunnel is faithful (messages, close codes, subprotocol, extension parameters,
forwarded headers), bounded (idle timeout, per-process limit, back-pressure), follows either
side closing, survives graceful shutdown until its timeout, and nothing but WebSocket is ever
tunnelled."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from e2e.harness import (
    PYTHON,
    REPO,
    START_TIMEOUT,
    Gateway,
    ManagedProcess,
    RssSampler,
    StackConfig,
    TomlValue,
    gateway,
    is_closed,
    listening_socket,
    read_response,
)

pytestmark = pytest.mark.e2e

WS_UPSTREAM = REPO / "tests" / "support" / "ws_upstream.py"
MiB = 1024 * 1024
# A close must reach the other side "at once": this bounds "at once" on a busy 2-core box.
PROMPT = 5.0


@dataclass
class WsUpstream:
    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self, conn_id: str = "") -> dict[str, Any]:
        with httpx.Client(trust_env=False, timeout=5) as client:
            payload: dict[str, Any] = client.get(f"{self.url}/_stats?id={conn_id}").json()
            return payload

    def wait_closed(self, conn_id: str) -> bool:
        """True once the upstream's connection ``conn_id`` has closed (it answers then)."""
        with httpx.Client(trust_env=False, timeout=15) as client:
            return client.get(f"{self.url}/_wait_closed?id={conn_id}").status_code == 200


@contextlib.contextmanager
def ws_upstream() -> Iterator[WsUpstream]:
    """The WebSocket echo upstream on a socket bound here; ready once it answered /health."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    try:
        process = ManagedProcess(
            [PYTHON, str(WS_UPSTREAM), "--fd", str(sock.fileno())], pass_fds=[sock.fileno()]
        )
    finally:
        sock.close()
    try:
        upstream = WsUpstream(port, process)
        try:
            with httpx.Client(trust_env=False, timeout=START_TIMEOUT) as client:
                client.get(f"{upstream.url}/health").raise_for_status()
        except httpx.HTTPError as exc:
            raise AssertionError(f"ws upstream did not start: {exc}\n{process.output()}") from exc
        yield upstream
    finally:
        process.stop()


def ws_config(
    upstream: WsUpstream, gateway_keys: dict[str, TomlValue] | None = None
) -> StackConfig:
    return StackConfig(
        pools={"ws": [upstream.url]},
        routes=[{"path_prefix": "/", "upstream": "ws"}],
        gateway=dict(gateway_keys or {}),
    )


def open_ws(gw: Gateway, path: str, **kw: Any) -> connect:
    """A websockets client to the gateway over TLS, trusting only the gateway's CA.  No
    compression, keepalive pings or message size limit unless a test asks."""
    options: dict[str, Any] = {
        "ssl": gw.ssl_context(),
        "compression": None,
        "max_size": None,
        "ping_interval": None,
        "proxy": None,
        "open_timeout": 10,
        "close_timeout": 5,
    }
    options.update(kw)
    return connect(f"wss://localhost:{gw.https_port}{path}", **options)


async def echo(ws: ClientConnection, message: str | bytes) -> None:
    await ws.send(message)
    assert await asyncio.wait_for(ws.recv(), PROMPT) == message


def upgrade_request(path: str) -> bytes:
    """A valid WebSocket handshake request, for raw sockets."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ).encode()


# --- one gateway in front of two upstreams, plus a static and a redirect route ----------------


@dataclass
class Site:
    gateway: Gateway
    upstream: WsUpstream
    victim: WsUpstream  # behind /victim; killed by one test


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("ws")
    files = directory / "files"
    files.mkdir()
    (files / "hello.txt").write_text("hello from disk\n")
    with ws_upstream() as upstream, ws_upstream() as victim:
        config = StackConfig(
            pools={"ws": [upstream.url], "victim": [victim.url]},
            routes=[
                {"path_prefix": "/", "upstream": "ws"},
                {"path_prefix": "/victim", "upstream": "victim"},
                {"path_prefix": "/files", "static": str(files), "strip_prefix": True},
                {"path_prefix": "/away", "redirect": "https://example.org"},
            ],
            # The victim is a WebSocket-only server: its health check gets 426 (README).
            pool_options={"victim": {"health_path": "/", "health_status": [426]}},
        )
        with gateway(directory / "gw", config) as gw:
            yield Site(gw, upstream, victim)


def test_text_and_binary_messages_echo(site: Site) -> None:
    """Text stays text, binary stays binary; the access log gets one line for the tunnel
    (status 101) once it has ended."""
    path = f"/echo?id={uuid.uuid4().hex}"

    async def scenario() -> None:
        async with open_ws(site.gateway, path) as ws:
            await echo(ws, "héllo, wörld")
            await echo(ws, bytes(range(256)))
            await echo(ws, "")
            pong = await ws.ping(b"are you there")  # answered by the upstream, through the tunnel
            await asyncio.wait_for(pong, PROMPT)

    asyncio.run(scenario())
    line = site.gateway.wait_for_log(f'"GET {path} HTTP/1.1" 101 ')
    assert f"upstream=127.0.0.1:{site.upstream.port}" in line


def masked_frame(payload: bytes) -> bytes:
    """One client-to-server text frame (RFC 6455 §5.2: clients mask), payload < 126 bytes."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def test_bytes_sent_together_with_the_handshake_are_not_lost(site: Site) -> None:
    """A frame in the same write as the upgrade request (after its head) reaches the upstream:
    the listener hands those bytes to the tunnel."""
    with site.gateway.tls_socket() as tls:
        tls.sendall(upgrade_request("/echo") + masked_frame(b"early bird"))
        received = b""
        while b"early bird" not in received:
            chunk = tls.recv(65536)
            assert chunk, f"closed before the echo: {received!r}"
            received += chunk
    head, _, frames = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert frames == b"\x81\x0aearly bird"  # the upstream's unmasked echo


def test_four_mib_message(site: Site) -> None:
    message = os.urandom(4 * MiB)

    async def scenario() -> None:
        async with open_ws(site.gateway, "/echo") as ws:
            await echo(ws, message)
            await echo(ws, message.hex()[: 4 * MiB])  # and as text

    asyncio.run(scenario())


def test_close_code_and_reason_reach_the_client(site: Site) -> None:
    async def scenario() -> None:
        async with open_ws(site.gateway, "/close?code=4001&reason=going+away") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), PROMPT)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "going away")

    asyncio.run(scenario())


def test_subprotocol_is_negotiated_with_the_upstream(site: Site) -> None:
    async def scenario() -> None:
        async with open_ws(site.gateway, "/echo", subprotocols=["chat.v2", "chat.v1"]) as ws:
            assert ws.subprotocol == "chat.v2"
            await echo(ws, "on chat.v2")

    asyncio.run(scenario())


def test_extension_parameters_are_identical_to_a_direct_connection(site: Site) -> None:
    """permessage-deflate as the upstream negotiates it (window bits 11, no server context
    takeover), word for word, and compressed messages pass both ways."""

    async def negotiated(url: str, **kw: Any) -> str:
        async with connect(url, compression="deflate", proxy=None, **kw) as ws:
            await echo(ws, "compress me " * 1000)
            assert ws.response is not None
            return ws.response.headers["Sec-WebSocket-Extensions"]

    async def scenario() -> tuple[str, str]:
        direct = await negotiated(f"ws://127.0.0.1:{site.upstream.port}/echo")
        gw = site.gateway
        tunnelled = await negotiated(f"wss://localhost:{gw.https_port}/echo", ssl=gw.ssl_context())
        return direct, tunnelled

    direct, tunnelled = asyncio.run(scenario())
    assert "server_max_window_bits=11" in direct
    assert tunnelled == direct


def test_upstream_sees_forwarded_headers_and_the_original_host(site: Site) -> None:
    async def scenario() -> tuple[dict[str, str], str]:
        async with open_ws(site.gateway, "/headers") as ws:
            headers = dict(json.loads(await asyncio.wait_for(ws.recv(), PROMPT)))
            assert ws.request is not None
            return headers, ws.request.headers["Sec-WebSocket-Key"]

    headers, key = asyncio.run(scenario())
    authority = f"localhost:{site.gateway.https_port}"
    assert headers["host"] == authority
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-host"] == authority
    assert headers["upgrade"].lower() == "websocket"
    assert headers["sec-websocket-key"] == key  # the handshake itself passes untouched


def test_two_hundred_concurrent_tunnels(site: Site) -> None:
    count = 200

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as opened:
            sockets = await asyncio.gather(
                *(opened.enter_async_context(open_ws(site.gateway, "/echo")) for _ in range(count))
            )
            # All of them are open upstream at the same time, not one after the other.
            assert site.upstream.stats()["open"] >= count
            await asyncio.gather(*(echo(ws, f"tunnel {i}") for i, ws in enumerate(sockets)))

    asyncio.run(scenario())


def test_upstream_killed_closes_the_client_side(site: Site) -> None:
    """kill -9 of the upstream process: the client's connection ends at once (no close
    frame, so 1006), not after an idle timeout."""

    async def scenario() -> float:
        async with open_ws(site.gateway, "/victim/echo") as ws:
            await echo(ws, "before")  # the 426-answering server was healthy enough to route to
            site.victim.process.proc.kill()
            started = time.monotonic()
            await asyncio.wait_for(ws.wait_closed(), PROMPT)
            assert ws.close_code == 1006
            elapsed = time.monotonic() - started
        # The next upgrade there gets the gateway's error, not a hang.
        with pytest.raises(InvalidStatus) as refused:
            async with open_ws(site.gateway, "/victim/echo"):
                pass
        assert refused.value.response.status_code in (502, 503)
        return elapsed

    assert asyncio.run(scenario()) < PROMPT


def test_client_gone_closes_the_upstream_side(site: Site) -> None:
    conn_id = uuid.uuid4().hex

    async def scenario() -> None:
        async with open_ws(site.gateway, f"/echo?id={conn_id}") as ws:
            await echo(ws, "still here")
            assert site.upstream.stats(conn_id)["closed"] is False
            ws.transport.abort()  # the client vanishes: no close frame, TCP reset

    asyncio.run(scenario())
    assert site.upstream.wait_closed(conn_id), "the upstream connection is still open"


@pytest.mark.parametrize("pipelined", [False, True], ids=["after-a-response", "pipelined"])
def test_upgrade_on_a_keep_alive_connection(site: Site, pipelined: bool) -> None:
    """An upgrade as the second request of a connection, sent after the first response or
    together with the first request, still becomes a tunnel."""
    first = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
    upgrade = upgrade_request("/echo") + masked_frame(b"second")
    with site.gateway.tls_socket() as tls:
        if pipelined:
            tls.sendall(first + upgrade)
        else:
            tls.sendall(first)
            assert read_response(tls)[0] == 200
            tls.sendall(upgrade)
        received = b""
        while not received.endswith(b"\x81\x06second"):
            chunk = tls.recv(65536)
            assert chunk, f"closed before the echo: {received!r}"
            received += chunk
    assert b"HTTP/1.1 101 " in received
    assert received.startswith(b"HTTP/1.1 200 " if pipelined else b"HTTP/1.1 101 ")


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_gone_during_the_handshake_closes_the_upstream_side(site: Site, how: str) -> None:
    """The client leaves while the upstream is still answering (its 101 comes 0.5 s late):
    the tunnel that then starts ends at once instead of waiting for the idle timeout."""
    conn_id = uuid.uuid4().hex
    tls = site.gateway.tls_socket()
    tls.sendall(upgrade_request(f"/echo?id={conn_id}&delay=0.5"))
    # Leave only once the upstream is answering: a reset that overtakes the request in the
    # gateway's receive buffer discards it, and there would be nothing to close upstream.
    deadline = time.monotonic() + PROMPT
    while not site.upstream.stats(conn_id)["seen"]:
        assert time.monotonic() < deadline, "the handshake never reached the upstream"
    if how == "reset":
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    tls.close()
    assert site.upstream.wait_closed(conn_id), "the upstream connection is still open"


@pytest.mark.parametrize("status", [403, 426])
def test_refused_upgrade_reaches_the_client_and_closes(site: Site, status: int) -> None:
    """A request pipelined after the refused upgrade is never answered: what follows an
    upgrade request's head is not treated as HTTP."""
    with site.gateway.tls_socket() as tls:
        tls.sendall(upgrade_request(f"/refuse/{status}") + b"GET /health HTTP/1.1\r\n\r\n")
        got, headers, body = read_response(tls)
        assert (got, body) == (status, b"refused\n")
        assert "sec-websocket-accept" not in headers
        assert is_closed(tls)


def test_h2c_upgrade_is_answered_as_plain_http(site: Site) -> None:
    """Upgrade: h2c is never forwarded: the upstream gets a plain GET without Upgrade or
    Connection: upgrade, the client a plain answer, and the connection is closed after it
    (what follows an upgrade request's head is not HTTP/1.1)."""
    with site.gateway.tls_socket() as tls:
        tls.sendall(
            b"GET /http/headers HTTP/1.1\r\nHost: localhost\r\n"
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # the h2 preface a client sends next
        )
        status, response_headers, body = read_response(tls)
        assert is_closed(tls)
    assert status == 200
    assert "upgrade" not in response_headers
    seen = json.loads(body)
    names = [name for name, _ in seen]
    assert "upgrade" not in names and "http2-settings" not in names
    assert all("upgrade" not in value.lower() for name, value in seen if name == "connection")


@pytest.mark.parametrize(
    ("path", "status"), [("/files/hello.txt", 200), ("/away/chat", 308)], ids=["static", "redirect"]
)
def test_upgrade_on_static_and_redirect_routes_is_not_tunnelled(
    site: Site, path: str, status: int
) -> None:
    with site.gateway.tls_socket() as tls:
        tls.sendall(upgrade_request(path))
        got, headers, body = read_response(tls)
        assert got == status
        assert "upgrade" not in headers and "sec-websocket-accept" not in headers
        if status == 200:
            assert body == b"hello from disk\n"
        else:
            assert headers["location"] == ["https://example.org/away/chat"]
        assert is_closed(tls)


def test_slow_reader_does_not_make_the_gateway_buffer(site: Site) -> None:
    """The upstream pushes 256 MiB to a client that reads nothing for a while: back-pressure
    stops the upstream (it manages to send only a little), the gateway's RSS stays flat, and
    afterwards every byte arrives."""
    total_mib = 256
    conn_id = uuid.uuid4().hex
    gw = site.gateway

    async def scenario() -> tuple[int, int, int]:
        with RssSampler(gw.process.pid) as rss:
            baseline = rss.peak
            # max_queue=1: the client library itself stops reading after one message.
            async with open_ws(gw, f"/push?mib={total_mib}&id={conn_id}", max_queue=1) as ws:
                await asyncio.sleep(2.0)  # the slow reader reads nothing for a while
                sent_while_stalled = site.upstream.stats(conn_id)["sent"]
                received = 0
                while (message := await asyncio.wait_for(ws.recv(), 30)) != "done":
                    received += len(message)
        return sent_while_stalled, received, rss.peak - baseline

    sent_while_stalled, received, growth = asyncio.run(scenario())
    assert received == total_mib * MiB
    assert sent_while_stalled < 64 * MiB, f"upstream sent {sent_while_stalled / MiB:.0f} MiB"
    assert growth < 64 * MiB, f"gateway RSS grew {growth / MiB:.0f} MiB"


def test_slow_upstream_does_not_make_the_gateway_buffer(site: Site) -> None:
    """The other direction: the client sends 128 MiB to an upstream that reads nothing for
    2 s.  Back-pressure holds the client's sends back meanwhile, the gateway's RSS stays flat,
    and afterwards the upstream counts every byte."""
    total = 128 * MiB
    chunk = os.urandom(MiB)
    gw = site.gateway

    async def scenario() -> tuple[int, int, int]:
        sent = 0

        async def send_all(ws: ClientConnection) -> None:
            nonlocal sent
            for _ in range(total // MiB):
                await ws.send(chunk)
                sent += len(chunk)
            await ws.send("done")

        with RssSampler(gw.process.pid) as rss:
            baseline = rss.peak
            async with open_ws(gw, "/stall?s=2") as ws:
                sending = asyncio.create_task(send_all(ws))
                await asyncio.sleep(1.5)  # the upstream is still not reading
                sent_while_stalled = sent
                await asyncio.wait_for(sending, 30)
                report = json.loads(await asyncio.wait_for(ws.recv(), 30))
        return sent_while_stalled, report["received"], rss.peak - baseline

    sent_while_stalled, received, growth = asyncio.run(scenario())
    assert received == total
    assert sent_while_stalled < 64 * MiB, f"client sent {sent_while_stalled / MiB:.0f} MiB"
    assert growth < 64 * MiB, f"gateway RSS grew {growth / MiB:.0f} MiB"


# --- gateways with their own settings -----------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(site: Site) -> WsUpstream:
    return site.upstream


@contextlib.contextmanager
def own_gateway(directory: Path, upstream: WsUpstream, **keys: TomlValue) -> Iterator[Gateway]:
    with gateway(directory, ws_config(upstream, keys)) as gw:
        yield gw


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, upstream: WsUpstream) -> Iterator[Gateway]:
    """Idle tunnels close after 0.5 s; two tunnels at most."""
    with own_gateway(
        tmp_path_factory.mktemp("limited"),
        upstream,
        websocket_idle_timeout=0.5,
        max_websocket_tunnels=2,
    ) as gw:
        yield gw


def test_idle_tunnel_is_closed_and_an_active_one_stays_open(
    limited: Gateway, upstream: WsUpstream
) -> None:
    """The idle tunnel is closed on both sides; the one with a message every 0.1 s lives on."""
    idle_id = uuid.uuid4().hex

    async def keep_talking(ws: ClientConnection, seconds: float) -> int:
        rounds = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await echo(ws, f"round {rounds}")
            rounds += 1
            await asyncio.sleep(0.1)  # well under the idle timeout between messages
        return rounds

    async def scenario() -> float:
        started = time.monotonic()  # before the tunnel exists, so idle_for >= the timeout
        async with (
            open_ws(limited, f"/echo?id={idle_id}") as idle,
            open_ws(limited, "/echo") as active,
        ):
            talking = asyncio.create_task(keep_talking(active, 1.5))
            await asyncio.wait_for(idle.wait_closed(), PROMPT)
            idle_for = time.monotonic() - started
            assert await talking > 5  # three times the idle timeout, never closed
            assert active.state is State.OPEN
            return idle_for

    idle_for = asyncio.run(scenario())
    assert 0.5 <= idle_for < PROMPT
    assert upstream.wait_closed(idle_id)
    limited.wait_for_log("idle for 0.5s closed (websocket_idle_timeout)")


def test_third_tunnel_over_the_limit_gets_503(limited: Gateway) -> None:
    async def scenario() -> None:
        # Pings every 0.1 s keep both tunnels busy, so the idle timeout cannot free a slot.
        async with (
            open_ws(limited, "/echo", ping_interval=0.1) as first,
            open_ws(limited, "/echo", ping_interval=0.1) as second,
        ):
            with pytest.raises(InvalidStatus) as refused:
                async with open_ws(limited, "/echo"):
                    pass
            response = refused.value.response
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "1"
            assert b"max_websocket_tunnels" in response.body
            await echo(first, "one")
            await echo(second, "two")
        # Closed tunnels free their slots.
        async with open_ws(limited, "/echo") as again:
            await echo(again, "three")

    asyncio.run(scenario())


def test_concurrent_upgrades_never_exceed_the_limit(limited: Gateway) -> None:
    """Five upgrades at once with room for two: exactly two tunnels, three 503s (a slot is
    taken when the handshake starts, not when the tunnel opens)."""

    async def attempt() -> ClientConnection | int:
        try:
            return await open_ws(limited, "/echo", ping_interval=0.1)
        except InvalidStatus as exc:
            return exc.response.status_code

    async def scenario() -> list[ClientConnection | int]:
        results = await asyncio.gather(*(attempt() for _ in range(5)))
        for result in results:
            if not isinstance(result, int):
                await echo(result, "in")
                await result.close()
        return results

    results = asyncio.run(scenario())
    assert sorted(r if isinstance(r, int) else 101 for r in results) == [101, 101, 503, 503, 503]


def test_tunnels_work_with_two_workers(tmp_path: Path, upstream: WsUpstream) -> None:
    async def scenario(gw: Gateway) -> None:
        async with contextlib.AsyncExitStack() as opened:
            sockets = await asyncio.gather(
                *(opened.enter_async_context(open_ws(gw, "/echo")) for _ in range(20))
            )
            await asyncio.gather(*(echo(ws, f"worker tunnel {i}") for i, ws in enumerate(sockets)))
            await asyncio.gather(*(echo(ws, os.urandom(100_000)) for ws in sockets))

    with own_gateway(tmp_path, upstream, workers=2) as gw:
        asyncio.run(scenario(gw))


def test_graceful_shutdown_keeps_a_tunnel_until_graceful_timeout(
    tmp_path: Path, upstream: WsUpstream
) -> None:
    """SIGTERM: the open tunnel keeps relaying; at graceful_timeout it is closed and the
    process exits."""
    graceful = 2.0

    async def scenario(gw: Gateway) -> tuple[float, float]:
        async with open_ws(gw, "/echo") as ws:
            await echo(ws, "before")
            signalled = time.monotonic()
            gw.process.signal(signal.SIGTERM)
            gw.wait_for_log("shutting down")
            await echo(ws, "during the shutdown")
            still_open = time.monotonic() - signalled
            await asyncio.wait_for(ws.wait_closed(), graceful + PROMPT)
            return still_open, time.monotonic() - signalled

    with own_gateway(tmp_path, upstream, graceful_timeout=graceful) as gw:
        still_open, closed_after = asyncio.run(scenario(gw))
        assert gw.process.wait(PROMPT) == 0
    assert still_open < graceful
    assert graceful - 0.5 <= closed_after < graceful + PROMPT
