"""Keep-alive connection pools, one per upstream server (Nginx's ``keepalive`` directive).

An idle connection is reused only while it is younger than ``keepalive_timeout``, which is
kept below the upstream's own keep-alive timeout: the server then never closes a connection
just as we start a request on it, the classic source of spurious 502s.  The most recently
used connection is taken first (LIFO), so the rest age out and get closed by the sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections import deque

from gateway.config import UpstreamServer, UpstreamSettings
from gateway.errors import UpstreamConnectError, UpstreamConnectTimeout, UpstreamTLSError
from gateway.upstream.connection import UpstreamConnection
from gateway.upstream.parsers import ResponseParser, parser_class

log = logging.getLogger("gateway.upstream")


def upstream_ssl_context(settings: UpstreamSettings) -> ssl.SSLContext | None:
    """The client context for a pool's https:// servers: the system trust store (or
    ``tls_ca_file`` instead) with hostname checks, as every browser does; None without them."""
    if not any(server.scheme == "https" for server in settings.servers):
        return None
    cafile = str(settings.tls_ca_file) if settings.tls_ca_file is not None else None
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if settings.tls_insecure_skip_verify:
        log.warning(
            "[upstreams.%s] tls_insecure_skip_verify = true: the servers' certificates are NOT "
            "checked; anyone on the path can read and change this traffic",
            settings.name,
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def connected_to_itself(transport: asyncio.BaseTransport) -> bool:
    """Whether a new connection is a TCP self-connect: connecting to a port of this machine
    that nothing listens on, the kernel can pick that very port as the source port, and the
    socket then connects to itself (RFC 9293's simultaneous open).  It happens once in tens of
    thousands of connects to a dead upstream on a port of the ephemeral range, as the free
    ports of test suites are.  Taken for a live server, the connection reads back the request
    as its response, and while it is open the upstream cannot bind its own port again."""
    sockname = transport.get_extra_info("sockname")
    return sockname is not None and sockname == transport.get_extra_info("peername")


def drop_without_time_wait(transport: asyncio.Transport) -> None:
    """Close with a reset (SO_LINGER 0): a normal close would leave the port in TIME_WAIT for a
    minute, which is what keeps the upstream from binding it."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class ConnectionPool:
    def __init__(
        self,
        server: UpstreamServer,
        settings: UpstreamSettings,
        parser: type[ResponseParser] | None = None,
    ) -> None:
        self.server = server
        self.connect_timeout = settings.connect_timeout
        self.read_timeout = settings.read_timeout
        self.max_idle = settings.keepalive
        self.idle_timeout = settings.keepalive_timeout
        self.parser = parser or parser_class()
        self.ssl = upstream_ssl_context(settings) if server.scheme == "https" else None
        self.server_hostname = settings.tls_server_name or server.host
        self._idle: deque[UpstreamConnection] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self.opened = 0  # connections opened, for tests and the dashboard
        self.in_flight = 0  # requests on this server now (counted by the proxy handler)

    async def acquire(self, *, fresh: bool = False) -> UpstreamConnection:
        """An open idle connection (unless ``fresh``), or a new one (UpstreamConnectError or
        UpstreamConnectTimeout when the server cannot be reached)."""
        loop = asyncio.get_running_loop()
        if not fresh:
            conn = self.take_idle(loop.time())
            if conn is not None:
                return conn
        return await self._connect(loop)

    def take_idle(self, now: float) -> UpstreamConnection | None:
        """The most recently used idle connection that is open and not expired, or None."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.is_usable and now - conn.idle_since < self.idle_timeout:
                return conn
            conn.close()
        return None

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection after an exchange; it is kept only if it can be reused."""
        if not conn.reusable or len(self._idle) >= self.max_idle:
            conn.close()
            return
        loop = conn.loop
        conn.state = conn.state.IDLE
        conn.idle_since = loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.idle_timeout, self._sweep)

    def discard(self, conn: UpstreamConnection) -> None:
        conn.close()

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> UpstreamConnection:
        server = self.server
        conn = UpstreamConnection(server, self.parser(), self.read_timeout, loop)
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.ssl is None:
                    await loop.create_connection(lambda: conn, server.host, server.port)
                else:
                    await loop.create_connection(
                        lambda: conn,
                        server.host,
                        server.port,
                        ssl=self.ssl,
                        server_hostname=self.server_hostname,
                    )
        except TimeoutError:
            raise UpstreamConnectTimeout(
                f"connecting to upstream {server.address} timed out after "
                f"{self.connect_timeout:g} s",
                server=server.address,
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamTLSError(
                f"upstream {server.url}'s certificate is not trusted ({exc.verify_message}); "
                f"set tls_ca_file in [upstreams] to its CA",
                server=server.address,
            ) from exc
        except ssl.SSLError as exc:
            raise UpstreamTLSError(
                f"TLS handshake with upstream {server.url} failed: {exc.reason or exc}",
                server=server.address,
            ) from exc
        except OSError as exc:
            reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else str(exc)
            raise UpstreamConnectError(
                f"cannot connect to upstream {server.address}: {reason}", server=server.address
            ) from exc
        if self.ssl is None and conn.transport is not None and connected_to_itself(conn.transport):
            drop_without_time_wait(conn.transport)
            raise UpstreamConnectError(
                f"cannot connect to upstream {server.address}: connection refused (nothing "
                f"listens there; the connect reached the gateway's own socket)",
                server=server.address,
            )
        self.opened += 1
        return conn

    def _sweep(self) -> None:
        """Close idle connections past their expiry; re-arm while any remain."""
        self._sweeper = None
        idle = self._idle
        if not idle:
            return
        loop = idle[0].loop
        now = loop.time()
        while idle and (now - idle[0].idle_since >= self.idle_timeout or not idle[0].is_usable):
            idle.popleft().close()
        if idle:
            delay = max(self.idle_timeout - (now - idle[0].idle_since), 0.05)
            self._sweeper = loop.call_later(delay, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            self._idle.pop().close()
