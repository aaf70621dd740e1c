"""A small upstream for the gateway's end-to-end tests, run as its own uvicorn process.

GET  /echo            -> JSON: server name, method, target, request headers, body size
POST /echo            -> same, after reading the whole body
GET  /bytes?n=N       -> N bytes of body, streamed in 64 KiB chunks (no Content-Length)
POST /upload          -> {"received": N}, counting a streamed request body
GET  /sse             -> text/event-stream: one event, then waits for POST /sse/release
GET  /slow?s=S        -> answers after S seconds (for read timeouts and graceful shutdown)
GET  /status/N        -> an empty response with status N
GET  /reflect-host    -> body echoes X-Forwarded-Host (a cache-poisoning probe)
GET  /health          -> {"status": "ok"} (or 500 after POST /health/fail until /health/ok)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any
from urllib.parse import parse_qs

import uvicorn

NAME = os.environ.get("ECHO_NAME", "echo")
state: dict[str, Any] = {"healthy": True, "release": None}


async def _read_body(receive: Any) -> int:
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return size
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            return size


async def _json(send: Any, status: int, payload: Any, headers: list[Any] | None = None) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode())
    method = scope["method"]
    if path == "/health":
        await _json(send, 200 if state["healthy"] else 500, {"status": "ok", "name": NAME})
    elif path == "/health/fail":
        state["healthy"] = False
        await _json(send, 200, {"healthy": False})
    elif path == "/health/ok":
        state["healthy"] = True
        await _json(send, 200, {"healthy": True})
    elif path in ("/echo", "/") or path.startswith("/echo/") or path.startswith("/prefixed"):
        size = await _read_body(receive)
        target = scope["raw_path"] + (
            b"?" + scope["query_string"] if scope["query_string"] else b""
        )
        await _json(
            send,
            200,
            {
                "server": NAME,
                "method": method,
                "target": target.decode("latin-1"),
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]
                ],
                "body_bytes": size,
            },
        )
    elif path == "/bytes":
        n = int(query.get("n", ["0"])[0])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        chunk = b"x" * 65536
        while n > 0:
            part = chunk if n >= len(chunk) else chunk[:n]
            n -= len(part)
            await send({"type": "http.response.body", "body": part, "more_body": n > 0})
        if int(query.get("n", ["0"])[0]) == 0:
            await send({"type": "http.response.body", "body": b""})
    elif path == "/upload":
        size = await _read_body(receive)
        await _json(send, 200, {"received": size, "server": NAME})
    elif path == "/sse":
        state["release"] = asyncio.Event()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        await state["release"].wait()
        await send({"type": "http.response.body", "body": b"data: second\n\n", "more_body": False})
    elif path == "/sse/release":
        if state["release"] is not None:
            state["release"].set()
        await _json(send, 200, {"released": True})
    elif path == "/slow":
        await asyncio.sleep(float(query.get("s", ["1"])[0]))
        await _json(send, 200, {"server": NAME, "slow": True})
    elif path.startswith("/status/"):
        status = int(path.rsplit("/", 1)[1])
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})
    elif path == "/reflect-host":
        xfh = dict(scope["headers"]).get(b"x-forwarded-host", b"").decode()
        await _json(send, 200, {"host": xfh}, [(b"cache-control", b"max-age=60")])
    else:
        await _json(send, 404, {"message": "not found"})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--keep-alive", type=float, default=5)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_keep_alive=args.keep_alive,
        access_log=False,
    )


if __name__ == "__main__":
    main()
