"""The guided tour's lab service and its client tools (``docs/tour.md``, ``docs/labs/``).

    python docs/tour/lab.py serve --port 9101     # one worker of [services.lab]
    python docs/tour/lab.py ws URL                # one WebSocket round trip through the gateway
    python docs/tour/lab.py load URL --seconds 3  # steady GETs; prints the status counts
    python docs/tour/lab.py slowloris URL         # a request head sent one byte at a time

The service answers under ``/lab``: ``hello`` (uncacheable), ``cached`` (``max-age=60``),
``page?cc=...`` (the Cache-Control you ask for), ``slow?ms=N``, ``pid``, ``ws`` (echo) and
``health`` (``/lab/health/fail`` and ``/lab/health/ok`` flip it).  The clients trust the CA
named by ``$CA`` (default ``certs/ca.pem``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import ssl
import sys
import time
from urllib.parse import urlsplit

HEALTHY = {"ok": True}


def build_app() -> object:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    pid = os.getpid()

    async def hello(request: Request) -> Response:
        return JSONResponse({"hello": "world", "pid": pid}, headers={"cache-control": "no-store"})

    async def cached(request: Request) -> Response:
        return JSONResponse({"cached": True, "pid": pid}, headers={"cache-control": "max-age=60"})

    async def page(request: Request) -> Response:
        headers = {}
        if "cc" in request.query_params:
            headers["cache-control"] = request.query_params["cc"]
        return PlainTextResponse(f"page from {pid}\n", headers=headers)

    async def slow(request: Request) -> Response:
        await asyncio.sleep(int(request.query_params.get("ms", "300")) / 1000)
        return JSONResponse({"slow": True, "pid": pid}, headers={"cache-control": "no-store"})

    async def whoami(request: Request) -> Response:
        return PlainTextResponse(f"{pid}\n", headers={"cache-control": "no-store"})

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": HEALTHY["ok"]}, status_code=200 if HEALTHY["ok"] else 500)

    async def flip(request: Request) -> Response:
        HEALTHY["ok"] = request.path_params["state"] == "ok"
        return JSONResponse({"ok": HEALTHY["ok"], "pid": pid})

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await websocket.send_text(f"echo: {text}")

    return Starlette(
        routes=[
            Route("/lab/hello", hello),
            Route("/lab/cached", cached),
            Route("/lab/page", page),
            Route("/lab/slow", slow),
            Route("/lab/pid", whoami),
            Route("/lab/health", health),
            Route("/lab/health/{state:str}", flip),
            WebSocketRoute("/lab/ws", echo),
        ]
    )


def serve(port: int) -> None:
    import uvicorn

    uvicorn.run(build_app(), host="127.0.0.1", port=port, log_level="warning")  # type: ignore[arg-type]


def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=os.environ.get("CA", "certs/ca.pem"))


async def ws_round_trip(url: str) -> None:
    import websockets

    target = url.replace("https://", "wss://", 1)
    async with websockets.connect(target, ssl=tls_context()) as ws:
        await ws.send("hello through the tunnel")
        print(await ws.recv())


def load(url: str, seconds: float, rate: float) -> None:
    """GETs started on a fixed schedule (not one after another), so a slow or failing
    request never hides the ones behind it; prints how many got each status."""
    import httpx

    async def run() -> collections.Counter[str]:
        counts: collections.Counter[str] = collections.Counter()
        async with httpx.AsyncClient(verify=tls_context(), timeout=10, trust_env=False) as client:

            async def one() -> None:
                try:
                    counts[str((await client.get(url)).status_code)] += 1
                except httpx.HTTPError as exc:
                    counts[type(exc).__name__] += 1

            tasks = []
            started = time.monotonic()
            for i in range(int(seconds * rate)):
                await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                tasks.append(asyncio.create_task(one()))
            await asyncio.gather(*tasks)
        return counts

    counts = asyncio.run(run())
    errors = sum(n for status, n in counts.items() if not status.startswith(("2", "3")))
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))
    print(f"requests: {sum(counts.values())} ({statuses}); errors: {errors}")


def slowloris(url: str, interval: float) -> None:
    """Send a request head one byte every ``interval`` seconds until the gateway answers or
    closes the connection; prints what it got and after how long."""
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 443
    head = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}\r\nX-Slow: " + "a" * 10_000
    raw = socket.create_connection((host, port), timeout=60)
    started = time.monotonic()
    sent = 0
    with tls_context().wrap_socket(raw, server_hostname=host) as sock:
        sock.settimeout(interval)
        answer = b""
        for byte in head.encode():
            try:
                sock.sendall(bytes([byte]))
                sent += 1
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except (ConnectionError, ssl.SSLError):
                break
            break  # an answer, or the end of the connection
    elapsed = time.monotonic() - started
    status = answer.split(b"\r\n", 1)[0].decode("latin-1") if answer else "nothing"
    print(f"sent {sent} bytes in {elapsed:.1f} s; the gateway answered {status} and closed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("ws")
    p.add_argument("url")
    p = sub.add_parser("load")
    p.add_argument("url")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rate", type=float, default=50.0)
    p = sub.add_parser("slowloris")
    p.add_argument("url")
    p.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port)
    elif args.command == "ws":
        asyncio.run(ws_round_trip(args.url))
    elif args.command == "load":
        load(args.url, args.seconds, args.rate)
    else:
        slowloris(args.url, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
