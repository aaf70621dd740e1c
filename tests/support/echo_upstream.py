"""A small upstream for the gateway's end-to-end tests, run as its own uvicorn process.

GET  /echo            -> JSON: server name, method, target, request headers, body size
POST /echo            -> same, after reading the whole body
GET  /bytes?n=N       -> N bytes of body, streamed in 64 KiB chunks (no Content-Length);
                         type= Content-Type (default application/octet-stream)
GET  /blob64k         -> 64 KiB, ``Cache-Control: public, max-age=3600`` and an ETag (304 to
                         a matching If-None-Match): the benchmark's cache-hit body
POST /upload          -> {"received": N, "sha256": ...}, counting a streamed request body
GET  /sse             -> text/event-stream: one event, then waits for POST /sse/release
GET  /slow?s=S        -> answers after S seconds (for read timeouts and graceful shutdown)
GET  /hold            -> answers once POST /hold/release is called (requests kept in flight)
GET  /forever         -> streams 16 KiB chunks until the client goes away, like a live feed
GET  /status/N        -> an empty response with status N
GET  /reflect-host    -> body echoes X-Forwarded-Host (a cache-poisoning probe)
GET  /json?n=N        -> a JSON document of N bytes (compressible, Content-Length, strong ETag
                         "json-N"); type= Content-Type, cc= Cache-Control, ce= Content-Encoding
GET  /health          -> {"status": "ok"} (or 500 after POST /health/fail until /health/ok)
GET  /hop             -> a response carrying hop-by-hop headers (Connection: x-hop, X-Hop,
                         Keep-Alive) next to an end-to-end X-Kept header
GET  /_stats          -> {"inflight": N, "seen": {path: count}}: requests being answered now and
                         every path requested so far (how tests prove what reached the upstream)
GET  /cache/...       -> a configurable cacheable response, counted (see ``cache_family``):
                         ?cc= Cache-Control, vary=, etag= (304 to a matching If-None-Match),
                         cookie= (Set-Cookie), age= (Age), delay= seconds before answering,
                         cdn= (CDN-Cache-Control), status= (the status, default 200),
                         lm=S (Last-Modified S seconds ago, with Date now; 304 to an
                         If-Modified-Since not before it), hdr=Name:Value (any field),
                         cl= (Content-Location); every answer, 304s too, carries
                         X-Served: <how many times this path was answered>
GET  /cache-count     -> {"count": N, "paths": {path: N}}: /cache/... requests answered so far
                         (Cache-Control: no-store, so it is never cached itself)
POST /cache-fail/on   -> every /cache/... answers 503 until POST /cache-fail/off

The benchmark (``bench/run.py``) runs this same program as its extra origin.

Started with ``--fd N`` it serves a listening socket inherited from the test harness, so the
port is known before the process starts and can never be taken by someone else meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import socket
import time
from email.utils import formatdate, parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs

import uvicorn

NAME = os.environ.get("ECHO_NAME", "echo")
BLOB = bytes(range(256)) * 256  # 64 KiB, not all one byte, so nothing compresses it by accident
BLOB_ETAG = b'"blob64k-v1"'
state: dict[str, Any] = {
    "healthy": True,
    "release": None,
    "hold": None,
    "inflight": 0,
    "seen": {},
}


def _hold_event() -> asyncio.Event:
    if state["hold"] is None:
        state["hold"] = asyncio.Event()
    event: asyncio.Event = state["hold"]
    return event


async def _read_body(receive: Any, digest: Any = None) -> int:
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return size
        size += len(message.get("body", b""))
        if digest is not None:
            digest.update(message.get("body", b""))
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


async def _stream_until_disconnected(receive: Any, send: Any) -> None:
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream")],
        }
    )
    chunk = b"f" * 16384
    try:
        while not gone.is_set():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0.005)
    finally:
        watcher.cancel()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/_stats":
        await _json(send, 200, {"inflight": state["inflight"], "seen": state["seen"]})
        return
    seen = state["seen"]
    seen[path] = seen.get(path, 0) + 1
    state["inflight"] += 1
    try:
        await respond(scope, receive, send)
    finally:
        state["inflight"] -= 1


async def respond(scope: dict[str, Any], receive: Any, send: Any) -> None:
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
    elif path == "/blob64k":
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"cache-control", b"public, max-age=3600"),
            (b"etag", BLOB_ETAG),
        ]
        if dict(scope["headers"]).get(b"if-none-match") == BLOB_ETAG:
            status, body = 304, b""
        else:
            status, body = 200, b"" if method == "HEAD" else BLOB
            headers.append((b"content-length", b"%d" % len(BLOB)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif path == "/bytes":
        n = int(query.get("n", ["0"])[0])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                # No Content-Length: a proxy must pass the stream through without buffering.
                "headers": [
                    (b"content-type", query.get("type", ["application/octet-stream"])[0].encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        chunk = b"x" * 65536
        while n > 0:
            part = chunk if n >= len(chunk) else chunk[:n]
            n -= len(part)
            await send({"type": "http.response.body", "body": part, "more_body": n > 0})
        if int(query.get("n", ["0"])[0]) == 0:
            await send({"type": "http.response.body", "body": b""})
    elif path == "/json":
        await _json_document(send, query)
    elif path == "/upload":
        digest = hashlib.sha256()  # proves a body arrived intact, not only its length
        size = await _read_body(receive, digest)
        await _json(send, 200, {"received": size, "server": NAME, "sha256": digest.hexdigest()})
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
    elif path == "/hold":
        await _hold_event().wait()
        await _json(send, 200, {"server": NAME, "held": True})
    elif path == "/hold/release":
        _hold_event().set()
        await _json(send, 200, {"released": True})
    elif path == "/forever":
        await _stream_until_disconnected(receive, send)
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
    elif path == "/hop":
        await _json(
            send,
            200,
            {"server": NAME},
            [
                (b"connection", b"x-hop"),
                (b"x-hop", b"1"),
                (b"keep-alive", b"timeout=5"),
                (b"x-kept", b"yes"),
            ],
        )
    elif path.startswith("/cache"):
        await cache_family(scope, receive, send, query)
    elif path == "/reflect-host":
        xfh = dict(scope["headers"]).get(b"x-forwarded-host", b"").decode()
        await _json(send, 200, {"host": xfh}, [(b"cache-control", b"max-age=60")])
    else:
        await _json(send, 404, {"message": "not found", "server": NAME})


@functools.lru_cache(maxsize=8)  # the benchmark measures the proxies, not this origin
def json_document(size: int) -> bytes:
    """A JSON array of records, exactly ``size`` bytes (at least 8): compressible like real
    API output, padded to the byte with a final string."""
    items: list[str] = []
    total = 1  # "["
    while True:
        item = json.dumps({"id": len(items), "name": f"user{len(items)}", "email": "u@x.org"})
        if total + len(item) + 1 > size - 8:
            break
        items.append(item)
        total += len(item) + 1
    pad = size - total - 3  # the padding string's quotes and the closing "]"
    text = "[" + "".join(item + "," for item in items) + '"' + "x" * pad + '"]'
    return text.encode()


async def _json_document(send: Any, query: dict[str, list[str]]) -> None:
    n = int(query.get("n", ["4096"])[0])
    headers = [
        (b"content-type", query.get("type", ["application/json"])[0].encode()),
        (b"etag", b'"json-%d"' % n),
    ]
    for param, name in (("cc", b"cache-control"), ("ce", b"content-encoding")):
        if param in query:
            headers.append((name, query[param][0].encode()))
    body = json_document(n)
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def cache_family(
    scope: dict[str, Any], receive: Any, send: Any, query: dict[str, list[str]]
) -> None:
    """The /cache... endpoints: a response whose caching headers the test chooses, and a
    counter of how many of them this process really answered (what a cache hit avoids)."""
    path = scope["path"]
    counts: dict[str, int] = state.setdefault("cache_paths", {})
    if path == "/cache-count":
        total = sum(counts.values())
        await _json(send, 200, {"count": total, "paths": counts}, [(b"cache-control", b"no-store")])
        return
    if path in ("/cache-fail/on", "/cache-fail/off"):
        state["cache_fail"] = path.endswith("/on")
        await _json(send, 200, {"failing": state["cache_fail"]}, [(b"cache-control", b"no-store")])
        return
    await _read_body(receive)
    counts[path] = counts.get(path, 0) + 1
    if state.get("cache_fail"):
        await _json(send, 503, {"message": "failing on purpose"})
        return
    if "delay" in query:
        await asyncio.sleep(float(query["delay"][0]))
    request_headers = dict(scope["headers"])
    headers: list[tuple[bytes, bytes]] = [(b"x-served", str(counts[path]).encode())]
    for param, name in (
        ("cc", b"cache-control"),
        ("vary", b"vary"),
        ("etag", b"etag"),
        ("cookie", b"set-cookie"),
        ("age", b"age"),
        ("cdn", b"cdn-cache-control"),
        ("cl", b"content-location"),
    ):
        if param in query:
            headers.append((name, query[param][0].encode()))
    for field in query.get("hdr", []):
        name, _, value = field.partition(":")
        headers.append((name.strip().lower().encode(), value.strip().encode()))
    not_modified = False
    if "lm" in query:
        now = time.time()
        modified = now - float(query["lm"][0])
        headers.append((b"date", formatdate(now, usegmt=True).encode()))
        headers.append((b"last-modified", formatdate(modified, usegmt=True).encode()))
        since = request_headers.get(b"if-modified-since")
        parsed = parsedate_to_datetime(since.decode()) if since else None
        not_modified = parsed is not None and parsed.timestamp() >= int(modified)
    etag = query.get("etag", [""])[0].encode()
    if etag and request_headers.get(b"if-none-match") == etag or not_modified:
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    payload = {
        "server": NAME,
        "path": path,
        "n": counts[path],
        "method": scope["method"],
        "accept_encoding": request_headers.get(b"accept-encoding", b"").decode(),
        "authorization": request_headers.get(b"authorization", b"").decode(),
        "forwarded_host": request_headers.get(b"x-forwarded-host", b"").decode(),
    }
    await _json(send, int(query.get("status", ["200"])[0]), payload, headers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fd", type=int, default=None, help="serve this inherited socket")
    parser.add_argument("--keep-alive", type=float, default=5)
    parser.add_argument("--certfile", default=None, help="serve HTTPS with this certificate")
    parser.add_argument("--keyfile", default=None)
    args = parser.parse_args()
    if args.port is None and args.fd is None:
        parser.error("give --port or --fd")
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port or 0,
        log_level="warning",
        timeout_keep_alive=args.keep_alive,  # a float works
        access_log=False,
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
    )
    server = uvicorn.Server(config)
    if args.fd is None:
        server.run()
    else:
        # Not uvicorn's own ``fd=``: it declares the socket AF_UNIX, so TCP_NODELAY is never
        # set and every response split in two writes waits out a delayed ACK (~40 ms).
        server.run(sockets=[socket.socket(fileno=args.fd)])


if __name__ == "__main__":
    main()
