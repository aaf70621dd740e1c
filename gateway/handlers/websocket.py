"""WebSocket upgrades on proxy routes: a raw byte tunnel, the way Nginx proxies them.

Theory of operation.  The listener marks a ``GET`` with ``Connection: upgrade`` and
``Upgrade: websocket`` with an ``UpgradeHandle``.  The handshake is forwarded like any request
(``ProxyHandler.handshake``: same server choice, X-Forwarded-*, Host kept, retries, health
reporting) with the two hop-by-hop headers put back.  If the upstream answers anything but
101, that answer is relayed as usual and the client connection is closed after it.  On 101 the
upstream's head is relayed verbatim (subprotocol, extensions and their parameters untouched)
and both connections leave HTTP: each transport gets a ``TunnelEnd`` protocol that writes what
it reads to the other side.  Frames are never decoded, so pings, close codes and
permessage-deflate pass through exactly as sent; measured here a raw tunnel does 1.5-1.8x the
round trips per second of decoding and re-encoding frames with a WebSocket library.

Back-pressure: when one side's write buffer passes its high-water mark, reading from the
other side pauses until it drains, so a slow reader never makes the gateway buffer a stream.
Either side closing (or dying) closes the other at once; a tunnel idle in both directions for
``websocket_idle_timeout`` is closed.  The request task waits for the tunnel to end, so open
tunnels count for graceful shutdown (like in-flight requests) and the access log gets one line
per tunnel (status 101, bytes sent to the client, duration).
"""

from __future__ import annotations

import asyncio
import logging

from gateway.config import Settings
from gateway.corking import CorkedTransport
from gateway.errors import TooManyTunnels
from gateway.handlers.proxy import ProxyHandler
from gateway.listener import UpgradeHandle
from gateway.request import Request

log = logging.getLogger("gateway.websocket")


class TunnelEnd(asyncio.Protocol):
    """One side of a tunnel: what its transport reads goes to the other side's transport,
    written once per loop iteration like every reply (``gateway.corking``)."""

    __slots__ = ("tunnel", "transport", "out", "peer", "received")

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.out = CorkedTransport(transport, tunnel.loop)
        self.peer: TunnelEnd | None = None
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.tunnel.last_activity = self.tunnel.loop.time()
        assert self.peer is not None
        self.peer.out.write(data)

    def eof_received(self) -> bool | None:
        return None  # close this side; connection_lost closes the other

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()

    def pause_writing(self) -> None:
        # Our transport's buffer is full: stop reading what would be written to it.
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()


class Tunnel:
    """Two transports joined both ways; ``done`` resolves when either side closed."""

    def __init__(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        idle_timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.last_activity = loop.time()
        self.done: asyncio.Future[None] = loop.create_future()
        self.client = TunnelEnd(self, client)
        self.upstream = TunnelEnd(self, upstream)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.idle_closed = False
        self._timer = loop.call_later(idle_timeout, self._check_idle)

    def start(self, to_client: bytes, to_upstream: bytes) -> None:
        """Switch both transports to the tunnel and send what each side already sent."""
        for end in (self.client, self.upstream):
            end.transport.set_protocol(end)
        if to_client:
            self.client.out.write(to_client)
        if to_upstream:
            self.upstream.out.write(to_upstream)
        for end in (self.client, self.upstream):
            if not end.transport.is_closing():
                end.transport.resume_reading()
            else:
                self.close()

    @property
    def bytes_to_client(self) -> int:
        return self.upstream.received

    def _check_idle(self) -> None:
        idle_for = self.loop.time() - self.last_activity
        if idle_for >= self.idle_timeout:
            self.idle_closed = True
            self.close()
            return
        self._timer = self.loop.call_later(self.idle_timeout - idle_for, self._check_idle)

    def close(self) -> None:
        """Close both sides (each flushes what it still has to write first)."""
        self._timer.cancel()
        for end in (self.client, self.upstream):
            if not end.transport.is_closing():
                end.out.close()
        if not self.done.done():
            self.done.set_result(None)


def switching_protocols_head(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The upstream's 101 as the client gets it: every header as the upstream sent it."""
    lines = b"".join(b"%s: %s\r\n" % pair for pair in headers)
    return b"HTTP/1.1 101 Switching Protocols\r\n" + lines + b"\r\n"


class WebSocketHandler:
    """The handler of WebSocket upgrades on proxy routes (see the module docstring)."""

    def __init__(self, settings: Settings, proxy: ProxyHandler) -> None:
        self.proxy = proxy
        self.idle_timeout = settings.gateway.websocket_idle_timeout
        self.max_tunnels = settings.gateway.max_websocket_tunnels
        self.tunnels: set[Tunnel] = set()
        # Upgrades whose handshake is under way hold a slot too, or concurrent handshakes
        # would all pass the limit check before any of their tunnels exists.
        self.handshaking = 0

    async def __call__(self, request: Request) -> None:
        upgrade: UpgradeHandle = request.scope["gateway.upgrade"]
        if len(self.tunnels) + self.handshaking >= self.max_tunnels:
            raise TooManyTunnels(
                f"this gateway process already has {self.max_tunnels} WebSocket tunnels open "
                "or opening (max_websocket_tunnels)"
            )
        self.handshaking += 1
        try:
            conn = await self.proxy.handshake(request)
        finally:
            self.handshaking -= 1
        if conn is None:
            return  # the upstream declined; its answer went to the client
        exchange = request.exchange
        head = conn.head
        assert head is not None
        upstream_transport, from_upstream = conn.detach()
        client_transport, from_client = upgrade.take_over()
        exchange.status = 101
        exchange.response_started = True
        loop = asyncio.get_running_loop()
        tunnel = Tunnel(client_transport, upstream_transport, self.idle_timeout, loop)
        self.tunnels.add(tunnel)
        try:
            tunnel.start(switching_protocols_head(head.headers) + from_upstream, from_client)
            await asyncio.shield(tunnel.done)
        finally:
            # Also on cancellation (graceful shutdown ran out of time): no tunnel outlives us.
            tunnel.close()
            self.tunnels.discard(tunnel)
            exchange.bytes_sent = tunnel.bytes_to_client
            if tunnel.idle_closed:
                log.info(
                    "%s %s: WebSocket tunnel idle for %gs closed (websocket_idle_timeout)",
                    *exchange.line,
                    self.idle_timeout,
                )
