"""The servers ``layers.py`` compares the gateway with, one process each.

    python bench/layers_servers.py floor   PORT CERT KEY BODYDIR   # TLS on the socket + llhttp only
    python bench/layers_servers.py uvloop-tls PORT CERT KEY BODYDIR  # the same on uvloop's TLS
    python bench/layers_servers.py uvicorn PORT CERT KEY BODYDIR   # uvicorn, a raw ASGI app
    python bench/layers_servers.py floor-proxy PORT CERT KEY ORIGIN  # floor + pooled upstream
    python bench/layers_servers.py origin  PORT BODYDIR            # plain HTTP, cacheable

``floor`` is the least Python that can answer HTTP/1.1 over TLS on this stack: an asyncio
protocol on the gateway's TLS transport (``gateway.tls.transport``, OpenSSL on the socket)
feeding httptools' parser, writing fixed bytes when a request is complete.  ``uvloop-tls`` is
the same protocol on uvloop's own TLS transport (memory BIOs), which the gateway used until
session 10.  ``uvicorn`` adds uvicorn's protocol, scope, cycle and task around an app
that sends the same bytes.  ``floor-proxy`` is the least Python that proxies: the floor's
protocol writing each request upstream on a pooled keep-alive connection to ``origin`` and
writing the response back, with the forwarding fields and hop-by-hop filtering a proxy needs
but none of the gateway's checks, routing, cache, logs or metrics.  ``origin`` is what the
gateway caches.  Every server answers
``/small`` (34 bytes of JSON) and ``/big`` (64 KiB) with the same fields a cache hit carries.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

BODIES = ("small", "big")
FIELDS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"public, max-age=3600"),
]


def bodies(directory: Path) -> dict[bytes, bytes]:
    return {b"/" + name.encode(): (directory / name).read_bytes() for name in BODIES}


def head(body: bytes, close: bool = False) -> bytes:
    fields = [*FIELDS, (b"content-length", str(len(body)).encode())]
    if close:
        fields.append((b"connection", b"close"))
    return b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def floor(port: int, cert: str, key: str, directory: Path, uvloop_tls: bool = False) -> None:
    import httptools
    import uvloop

    answers = {path: head(body) + body for path, body in bodies(directory).items()}
    closing = {path: head(body, close=True) + body for path, body in bodies(directory).items()}

    class Floor(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_message_complete(self) -> None:
            if self.parser.should_keep_alive():
                self.transport.write(answers.get(self.url, answers[b"/small"]))
            else:
                self.transport.write(closing.get(self.url, closing[b"/small"]))
                self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if uvloop_tls:
            server = await loop.create_server(
                Floor, "127.0.0.1", port, ssl=tls_context(cert, key), backlog=1024
            )
            await server.serve_forever()
        from gateway.tls.transport import TLSServer

        sock = socket.create_server(("127.0.0.1", port), backlog=1024)
        TLSServer(loop, Floor, sock, tls_context(cert, key), handshake_timeout=10.0)
        await asyncio.Future()

    uvloop.run(main())


# RFC 9110 §7.6.1: connection-specific fields a proxy does not forward.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade"}
)
PROXY_POOL = 64  # upstream connections, opened before serving (as warm as nginx's keepalive)


def floor_proxy(port: int, cert: str, key: str, origin: int) -> None:
    """``floor`` in front of ``origin``: ``/nc/X`` is forwarded as ``/X``."""
    import httptools
    import uvloop

    idle: list[Upstream] = []

    class Upstream(asyncio.Protocol):
        client: Proxy | None = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = httptools.HttpResponseParser(self)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_begin(self) -> None:
            self.lines = [b""]
            self.body: list[bytes] = []

        def on_header(self, name: bytes, value: bytes) -> None:
            name = name.lower()
            if name not in HOP_BY_HOP:
                self.lines.append(name + b": " + value + b"\r\n")

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def connection_lost(self, exc: Exception | None) -> None:
            # The origin closes a connection idle for its keep-alive timeout (5 s).
            if self in idle:
                idle.remove(self)
            if self.client is not None:
                self.client.transport.close()

        def on_message_complete(self) -> None:
            client, self.client = self.client, None
            idle.append(self)
            assert client is not None
            self.lines[0] = b"HTTP/1.1 %d OK\r\n" % self.parser.get_status_code()
            self.lines.append(b"\r\n")
            client.transport.write(b"".join(self.lines + self.body))

    class Proxy(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.client = transport.get_extra_info("peername")[0].encode()

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_begin(self) -> None:
            self.lines = [b""]

        def on_url(self, url: bytes) -> None:
            self.lines[0] = b"GET %s HTTP/1.1\r\n" % url.removeprefix(b"/nc")

        def on_header(self, name: bytes, value: bytes) -> None:
            name = name.lower()
            if name not in HOP_BY_HOP:
                self.lines.append(name + b": " + value + b"\r\n")

        def on_message_complete(self) -> None:
            self.lines.append(
                b"x-forwarded-for: %s\r\nx-forwarded-proto: https\r\n\r\n" % self.client
            )
            head = b"".join(self.lines)
            if idle:
                forward(idle.pop(), self, head)
            else:
                asyncio.get_running_loop().create_task(connect(self, head))

    def forward(upstream: Upstream, client: Proxy, head: bytes) -> None:
        upstream.client = client
        upstream.transport.write(head)

    async def connect(client: Proxy, head: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(Upstream, "127.0.0.1", origin)
        forward(upstream, client, head)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(PROXY_POOL):  # warm, as nginx's after the first run
            _, upstream = await loop.create_connection(Upstream, "127.0.0.1", origin)
            idle.append(upstream)
        from gateway.tls.transport import TLSServer

        sock = socket.create_server(("127.0.0.1", port), backlog=1024)
        TLSServer(loop, Proxy, sock, tls_context(cert, key), handshake_timeout=10.0)
        await asyncio.Future()

    uvloop.run(main())


def raw_asgi(directory: Path) -> Any:
    answers = {
        path: ([*FIELDS, (b"content-length", str(len(b)).encode())], b)
        for path, b in bodies(directory).items()
    }

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        fields, body = answers.get(scope["raw_path"], answers[b"/small"])
        await send({"type": "http.response.start", "status": 200, "headers": fields})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    import uvicorn

    mode, port = sys.argv[1], int(sys.argv[2])
    if mode in ("floor", "uvloop-tls"):
        floor(port, sys.argv[3], sys.argv[4], Path(sys.argv[5]), uvloop_tls=mode == "uvloop-tls")
        return
    if mode == "floor-proxy":
        floor_proxy(port, sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    common: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "off",
        "access_log": False,
        "log_level": "warning",
        "server_header": False,
        "date_header": False,
    }
    if mode == "uvicorn":
        app = raw_asgi(Path(sys.argv[5]))
        uvicorn.run(app, ssl_certfile=sys.argv[3], ssl_keyfile=sys.argv[4], **common)
    elif mode == "origin":
        uvicorn.run(raw_asgi(Path(sys.argv[3])), **common)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
