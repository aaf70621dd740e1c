"""The servers ``layers.py`` compares the gateway with, one process each.

    python bench/layers_servers.py floor   PORT CERT KEY BODYDIR   # TLS on the socket + llhttp only
    python bench/layers_servers.py uvloop-tls PORT CERT KEY BODYDIR  # the same on uvloop's TLS
    python bench/layers_servers.py uvicorn PORT CERT KEY BODYDIR   # uvicorn, a raw ASGI app
    python bench/layers_servers.py origin  PORT BODYDIR            # plain HTTP, cacheable

``floor`` is the least Python that can answer HTTP/1.1 over TLS on this stack: an asyncio
protocol on the gateway's TLS transport (``gateway.tls.transport``, OpenSSL on the socket)
feeding httptools' parser, writing fixed bytes when a request is complete.  ``uvloop-tls`` is
the same protocol on uvloop's own TLS transport (memory BIOs), which the gateway used until
session 10.  ``uvicorn`` adds uvicorn's protocol, scope, cycle and task around an app
that sends the same bytes.  ``origin`` is what the gateway caches.  Every server answers
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
