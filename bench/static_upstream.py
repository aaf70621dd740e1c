"""The benchmark's extra origin: a cacheable blob and unbounded streams, on one uvicorn process.

The backend has no cacheable or large responses, so the cache-hit and 1 GiB scenarios route a
few paths here, in nginx and in the gateway alike.

GET  /blob64k       -> 65536 bytes, ``Cache-Control: public, max-age=3600`` and an ETag
                       (``If-None-Match`` with that ETag gets 304)
GET  /bytes?n=N     -> N bytes streamed in 64 KiB chunks, no Content-Length, ``no-store``
POST /upload        -> ``{"received": N}`` after counting a streamed request body (any method)
GET  /health        -> ``{"status": "ok"}`` for the gateway's active checks
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import uvicorn

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CHUNK = b"x" * 65536
BLOB = bytes(range(256)) * 256  # 64 KiB, not all one byte, so nothing compresses it by accident
BLOB_ETAG = b'"blob64k-v1"'


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await _send(send, status, [(b"content-type", b"application/json")], body)


async def _count_body(receive: Receive) -> int:
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return size
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            return size


async def _stream(send: Send, n: int) -> None:
    # No Content-Length: the proxies must pass a chunked stream through without buffering it.
    headers = [(b"content-type", b"application/octet-stream"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if n == 0:
        await send({"type": "http.response.body", "body": b""})
    while n > 0:
        part = CHUNK if n >= len(CHUNK) else CHUNK[:n]
        n -= len(part)
        await send({"type": "http.response.body", "body": part, "more_body": n > 0})


async def app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/blob64k":
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"cache-control", b"public, max-age=3600"),
            (b"etag", BLOB_ETAG),
        ]
        if dict(scope["headers"]).get(b"if-none-match") == BLOB_ETAG:
            await _send(send, 304, headers, b"")
        else:
            await _send(send, 200, headers, b"" if scope["method"] == "HEAD" else BLOB)
    elif path == "/bytes":
        query = parse_qs(scope["query_string"].decode("latin-1"))
        await _stream(send, max(0, int(query.get("n", ["0"])[0])))
    elif path == "/upload":
        await _json(send, 200, {"received": await _count_body(receive)})
    elif path == "/health":
        await _json(send, 200, {"status": "ok"})
    else:
        await _json(send, 404, {"message": "not found"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
