"""The real HTTP/1.1 listener and ``GatewayApp`` over in-memory transports, no sockets or TLS.

``MemoryGateway`` builds the app from a config dict, the listener protocol as uvicorn's server
would (``gateway.listener.http_protocol_class``), and one client connection whose bytes the
test (or ``bench/request_path.py``) feeds to ``data_received``.  Each upstream server's pool
holds ``MemoryUpstream`` connections: a request head written to one is recorded and answered
on a later loop turn by the next of the server's scripted responses (a list of byte pieces,
each delivered on its own turn; ``CLOSE`` closes the connection instead).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

CLOSE = b"<close>"  # a scripted "response" that closes the connection unanswered


def json_response(body: bytes, fields: bytes = b"content-type: application/json\r\n") -> bytes:
    return b"HTTP/1.1 200 OK\r\n%scontent-length: %d\r\n\r\n%s" % (fields, len(body), body)


class ClientTransport(asyncio.Transport):
    """The client's side of the connection: collects what the gateway writes."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False
        self.paused = False  # as if the client stopped reading (the write buffer is full)
        self.on_write: Any = None  # called after each write (the bench's waiter)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {
            "peername": ("127.0.0.1", 50000),
            "sockname": ("127.0.0.1", 8443),
            "sslcontext": True,
        }.get(name, default)

    def write(self, data: Any) -> None:
        self.data += data
        if self.on_write is not None:
            self.on_write()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 1 << 20 if self.paused else 0


class MemoryUpstream(asyncio.Transport):
    """One upstream connection: records request heads, answers from ``server.script``."""

    def __init__(self, server: ScriptedServer, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.server = server
        self.protocol = protocol
        self.loop = asyncio.get_running_loop()
        self.closed = False

    def write(self, data: Any) -> None:
        data = bytes(data)
        self.server.requests.append(data)
        if b"\r\n\r\n" not in data:
            return  # body bytes (a head and the start of its body may come in one write)
        answer = self.server.next_answer()
        if answer is None:
            return  # silent: the read timeout's business
        if answer == [CLOSE]:
            self.loop.call_soon(self._close_unanswered)
            return
        when = 0
        for piece in answer:
            when += 1
            self._deliver_later(piece, when)

    def _deliver_later(self, piece: bytes, turns: int) -> None:
        def deliver(left: int = turns) -> None:
            if left > 1:
                self.loop.call_soon(deliver, left - 1)
            elif not self.closed:
                self.protocol.data_received(piece)

        self.loop.call_soon(deliver)

    def _close_unanswered(self) -> None:
        self.closed = True
        self.protocol.connection_lost(None)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class ScriptedServer:
    """What one upstream server answers: each request takes the next script entry (a list
    of byte pieces, or None for silence); ``default`` when the script is used up."""

    def __init__(self, default: bytes) -> None:
        self.default = default
        self.script: deque[list[bytes] | None] = deque()
        self.requests: list[bytes] = []
        self.connections = 0

    def next_answer(self) -> list[bytes] | None:
        if self.script:
            return self.script.popleft()
        return [self.default]

    def heads(self) -> list[bytes]:
        """The request heads written, without any body bytes written with them."""
        return [
            data.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
            for data in self.requests
            if b"\r\n\r\n" in data
        ]


class MemoryGateway:
    """The app, its listener protocol and one client connection (see the module docstring)."""

    def __init__(self, config: dict[str, Any], default_response: bytes) -> None:
        self.config = config
        self.default_response = default_response
        self.tmp = Path(tempfile.mkdtemp(prefix="pygateway-memory-"))

    async def start(self, *, idle: int = 1, draining: bool = False) -> None:
        """``draining``: the listener is draining when the connection is made (its TLS
        handshake ended after a graceful shutdown or a reload began)."""
        import uvicorn

        from gateway.app import GatewayApp
        from gateway.client_limits import ClientLimits
        from gateway.config import parse_settings
        from gateway.listener import ListenerState, http_protocol_class
        from gateway.runtime.reload import AppSwitch
        from gateway.upstream.group import Upstream

        self.settings = settings = parse_settings(self.config, self.tmp / "gateway.toml")
        self.upstreams = {name: Upstream(u) for name, u in settings.upstreams.items()}
        self.servers: dict[str, ScriptedServer] = {}
        for upstream in self.upstreams.values():
            upstream.checker.ready.set()  # as after the first passing health check
            for server, pool in upstream.pools.items():
                scripted = self.servers[server.address] = ScriptedServer(self.default_response)
                pool._connect = self._connector(pool, scripted)  # type: ignore[method-assign]
                for _ in range(idle):
                    pool._idle.append(self._connection(pool, scripted))
        self.app = GatewayApp(self.settings, self.upstreams)
        self.switch = AppSwitch(self.app)
        config = uvicorn.Config(
            self.switch,
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            date_header=False,
            proxy_headers=False,
        )
        config.load()
        protocol_class: Any = http_protocol_class(
            limits=ClientLimits.from_settings(settings.gateway)
        )
        state = ListenerState()
        state.draining = draining
        self.protocol = protocol_class(config=config, server_state=state, app_state={})
        self.client = ClientTransport()
        self.protocol.connection_made(self.client)

    def _connection(self, pool: Any, scripted: ScriptedServer) -> Any:
        from gateway.upstream.connection import UpstreamConnection

        loop = asyncio.get_running_loop()
        conn = UpstreamConnection(pool.server, pool.parser(), pool.read_timeout, loop)
        conn.connection_made(MemoryUpstream(scripted, conn))
        conn.requests = 1  # as a pooled connection that served a request before
        scripted.connections += 1
        return conn

    def _connector(self, pool: Any, scripted: ScriptedServer) -> Any:
        async def connect(loop: asyncio.AbstractEventLoop) -> Any:
            conn = self._connection(pool, scripted)
            conn.requests = 0
            pool.opened += 1
            return conn

        return connect

    def server(self, name: str = "app") -> ScriptedServer:
        """The scripted server of upstream ``name``'s first server."""
        upstream = self.upstreams[name]
        return self.servers[upstream.settings.servers[0].address]

    def send(self, request: bytes) -> None:
        self.protocol.data_received(request)

    async def response(self, timeout: float = 5.0) -> bytes:
        """Wait until the connection has nothing in flight (every request answered, no task
        left) or is closed, and return (and forget) the bytes written to the client."""
        protocol = self.protocol
        async with asyncio.timeout(timeout):
            while not self.client.closed:
                cycle = protocol.cycle
                if (
                    cycle is not None
                    and cycle.response_complete
                    and not protocol.pipeline
                    and not protocol.tasks
                    and protocol.corked.held is None  # a head alone goes out a turn later
                ):
                    break
                await asyncio.sleep(0)
        data = bytes(self.client.data)
        self.client.data.clear()
        return data
