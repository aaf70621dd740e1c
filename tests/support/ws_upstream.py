"""A WebSocket echo upstream for the gateway's end-to-end tests and the benchmark, run as its
own process with the ``websockets`` library.

WebSocket paths (any other path upgrades to the echo too):
  /echo            every message is sent back as it came (text stays text, binary binary)
  /headers         first message: JSON of the handshake's request headers, then the echo
  /close?code=C&reason=R   closes at once with that code and reason
  /push?mib=N      sends N binary messages of 1 MiB (counted in /_stats), then "done"
  /stall?s=S       reads nothing for S seconds, then counts the bytes of the messages up to
                   a text "done" and answers {"received": N}
  ?id=X on any of them names the connection for /_stats and /_wait_closed
  ?delay=S on any of them: the 101 is sent only after S seconds

Subprotocols ``chat.v1`` / ``chat.v2`` are accepted (the client's first supported one), and
permessage-deflate is offered with non-default parameters (window bits 11, no context
takeover on the server), so a test can tell a faithful tunnel from one that renegotiates.

Plain HTTP answers (no upgrade), through ``process_request``:
  GET /health                 200 "ok"
  GET /http/headers           200 JSON of the request headers (what a plain request carried)
  GET /refuse/N               status N to anything, upgrade or not
  GET /_stats?id=X            {"open": n, "sent": bytes pushed to X, "closed": bool}
  GET /_wait_closed?id=X      200 once connection X has closed (504 after 10 s)
Any other plain GET gets websockets' own 426 Upgrade Required: a WebSocket-only server, whose
health check therefore needs ``health_status = [426]``.

Started with ``--fd N`` it serves a listening socket inherited from the test harness, so the
port is known before the process starts; ``--port P`` binds 127.0.0.1:P itself.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import json
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response

SUBPROTOCOLS = ["chat.v1", "chat.v2"]
MIB = 1024 * 1024
PUSH_CHUNK = bytes(range(256)) * (MIB // 256)
WAIT_CLOSED_TIMEOUT = 10.0


@dataclass
class Tracked:
    sent: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)


tracked: dict[str, Tracked] = {}
open_connections = 0


def _query(path: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(path)
    return parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}


def _json(connection: ServerConnection, status: int, payload: Any) -> Response:
    response = connection.respond(http.HTTPStatus(status), json.dumps(payload))
    response.headers["Content-Type"] = "application/json"
    return response


watchers: set[asyncio.Task[None]] = set()


async def _mark_closed(connection: ServerConnection, entry: Tracked) -> None:
    await connection.wait_closed()
    entry.closed.set()


async def process_request(connection: ServerConnection, request: Request) -> Response | None:
    path, query = _query(request.path)
    if path == "/health":
        return connection.respond(http.HTTPStatus.OK, "ok\n")
    if path == "/http/headers":
        return _json(connection, 200, [[k.lower(), v] for k, v in request.headers.raw_items()])
    if path.startswith("/refuse/"):
        return connection.respond(http.HTTPStatus(int(path[8:])), "refused\n")
    if path == "/_stats":
        entry = tracked.get(query.get("id", ""))
        return _json(
            connection,
            200,
            {
                "open": open_connections,
                "sent": entry.sent if entry else 0,
                "closed": entry.closed.is_set() if entry else False,
                "seen": entry is not None,  # its handshake request has arrived
            },
        )
    if path == "/_wait_closed":
        entry = tracked.setdefault(query.get("id", ""), Tracked())
        try:
            await asyncio.wait_for(entry.closed.wait(), WAIT_CLOSED_TIMEOUT)
        except TimeoutError:
            return connection.respond(http.HTTPStatus.GATEWAY_TIMEOUT, "still open\n")
        return connection.respond(http.HTTPStatus.OK, "closed\n")
    if "id" in query:
        # A connection can close before its handshake completes (the gateway's client left
        # during a ?delay): /_wait_closed must see that too, not only a closed tunnel.
        entry = tracked.setdefault(query["id"], Tracked())
        watcher = asyncio.create_task(_mark_closed(connection, entry))
        watchers.add(watcher)
        watcher.add_done_callback(watchers.discard)
    if "delay" in query:
        await asyncio.sleep(float(query["delay"]))
    return None  # a WebSocket handshake (or websockets' 426 for a plain request)


def select_subprotocol(ws: ServerConnection, offered: Any) -> str | None:
    # websockets refuses a client that offers none of ours; an echo client offers none.
    return next((p for p in offered if p in SUBPROTOCOLS), None)


async def handler(ws: ServerConnection) -> None:
    global open_connections
    path, query = _query(ws.request.path if ws.request else "/")
    entry = tracked.setdefault(query["id"], Tracked()) if "id" in query else Tracked()
    open_connections += 1
    try:
        if path == "/close":
            await ws.close(int(query.get("code", "1000")), query.get("reason", ""))
            return
        if path == "/headers":
            assert ws.request is not None
            await ws.send(json.dumps([[k.lower(), v] for k, v in ws.request.headers.raw_items()]))
        if path == "/stall":
            await asyncio.sleep(float(query.get("s", "1")))  # websockets stops reading too
            received = 0
            while (message := await ws.recv()) != "done":
                received += len(message)
            await ws.send(json.dumps({"received": received}))
        if path == "/push":
            for _ in range(int(query.get("mib", "1"))):
                await ws.send(PUSH_CHUNK)
                entry.sent += len(PUSH_CHUNK)
            await ws.send("done")
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass
    finally:
        open_connections -= 1
        entry.closed.set()


async def serve_forever(sock: socket.socket) -> None:
    deflate = ServerPerMessageDeflateFactory(
        server_no_context_takeover=True,
        server_max_window_bits=11,
        client_max_window_bits=11,
        compress_settings={"memLevel": 4},
    )
    async with serve(
        handler,
        sock=sock,
        process_request=process_request,
        select_subprotocol=select_subprotocol,
        compression=None,
        extensions=[deflate],
        max_size=None,
        ping_interval=None,  # the tests decide when pings happen
        open_timeout=WAIT_CLOSED_TIMEOUT + 5,  # /_wait_closed answers within its own timeout
    ) as server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, help="serve this inherited listening socket")
    parser.add_argument("--port", type=int, help="bind 127.0.0.1:PORT")
    args = parser.parse_args()
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
    else:
        sock = socket.create_server(("127.0.0.1", args.port or 0), backlog=1024)
    try:
        import uvloop

        uvloop.run(serve_forever(sock))
    except ImportError:  # pragma: no cover - uvloop not installed
        asyncio.run(serve_forever(sock))


if __name__ == "__main__":
    main()
