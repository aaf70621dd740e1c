"""Static files: the ``static = "DIR"`` route handler (Nginx ``root`` with ``gzip_static``,
Caddy ``file_server`` with ``precompressed``).

Theory of operation.  ``static_fs`` turns the request path into an opened file inside the
root (or a 400/404, or a redirect to a directory's slash form); ``static_http`` holds the
HTTP rules as pure functions; this module puts them together on the event loop:

- GET and HEAD only (405 with Allow otherwise).
- In RFC 9110 §13.2.2's order: If-None-Match (else If-Modified-Since) may answer 304; then a
  single byte ``Range`` (checked against If-Range) answers 206, or 416 when it lies outside
  the file.  Several ranges are answered 200 with the whole file (§14.2 lets a server
  ignore Range; multipart/byteranges is not built).
- The body goes out ``CHUNK_SIZE`` bytes at a time, never read whole; each chunk is read
  only after the previous one was handed to the (flow-controlled) send, so a slow client
  holds one chunk.  A read never waits for the disk on the event loop: what the page cache
  holds is read at once (``read_nowait``), the rest in a thread.  The first lookup of a
  path runs in a thread too (with the first chunk of a plain GET on the same trip); a hot
  path reuses it for a second (``Lookups``).

Every failure is a ``gateway.errors`` type, which ``GatewayApp`` renders as the gateway's JSON
error.  Not handled: If-Match / If-Unmodified-Since (no 412; these are for writes).
"""

from __future__ import annotations

import asyncio
import os
import time
from email.utils import formatdate
from pathlib import Path

from gateway.errors import ClientDisconnected, GatewayError, MethodNotAllowed, NotFound
from gateway.handlers.static_fs import (
    DirectoryWithoutSlash,
    Found,
    Lookups,
    StaticFile,
    directory_location,
    find_and_open,
    open_found,
    path_segments,
    read_nowait,
)
from gateway.handlers.static_http import (
    Conditions,
    content_range,
    http_date,
    if_range_holds,
    not_modified,
    single_range,
)
from gateway.headers import Headers
from gateway.request import Request

# Bytes read and sent at a time.  Measured over TLS on a busy 2-core box, 1 GiB from the page
# cache to curl: with every read in a thread, 64 KiB cost 1.5-1.7 s of gateway CPU, 256 KiB
# 1.0-1.1 s and 1 MiB 0.8-1.0 s (the thread hops add up); with page-cache reads on the loop
# (as now) the three cost the same within the noise, and 15-20% less CPU than thread reads of
# 256 KiB measured alternately with them.  256 KiB keeps the hops few when the disk is needed,
# while a slow client holds a quarter of what 1 MiB would make it hold.
CHUNK_SIZE = 256 * 1024
ALLOW = "GET, HEAD"
# The status of the trailing-slash redirect for a directory URL (Caddy's choice; Nginx 301).
DIRECTORY_REDIRECT = 308


class StaticHandler:
    """Serves files below ``root``; ``cache_control`` goes on every file it serves."""

    def __init__(self, root: Path, cache_control: str, chunk_size: int = CHUNK_SIZE) -> None:
        self.root = os.path.realpath(root)
        self.cache_control = cache_control.encode()
        self.chunk_size = chunk_size
        self.lookups = Lookups()

    async def __call__(self, request: Request) -> None:
        method = request.method
        if method != "GET" and method != "HEAD":
            raise MethodNotAllowed(f"{method} is not allowed on static files", ALLOW)
        raw_path: bytes = request.scope["raw_path"]
        segments = path_segments(request.route.relative_path(raw_path))
        conditions = Conditions.from_headers(request.headers)
        key = (segments, raw_path.endswith(b"/"))
        file = self._open_recent(key, conditions)
        if file is None:
            try:
                file = await self._look_up(key, conditions, method)
            except DirectoryWithoutSlash:
                location = directory_location(raw_path, request.scope["query_string"])
                await self._redirect(request, location)
                return
        try:
            await self._answer(request, file, conditions)
        finally:
            os.close(file.fd)

    def _open_recent(
        self, key: tuple[tuple[str, ...], bool], conditions: Conditions
    ) -> StaticFile | None:
        """The file of a recent lookup of this path, opened here on the event loop: only
        open(2) and fstat(2) of a path just resolved, whose directory entries are in memory."""
        found = self.lookups.get(key, time.monotonic())
        if found is None:
            return None
        try:
            return open_found(found, conditions.accept_encoding)
        except NotFound:
            self.lookups.discard(key)  # gone meanwhile: look it up afresh
            return None

    async def _look_up(
        self, key: tuple[tuple[str, ...], bool], conditions: Conditions, method: str
    ) -> StaticFile:
        """The lookup in a thread; a plain GET gets its first chunk read on the same trip."""
        plain = method == "GET" and conditions.if_none_match is None
        plain = plain and conditions.if_modified_since is None and conditions.range is None
        loop = asyncio.get_running_loop()
        lookup = loop.run_in_executor(
            None,
            find_and_open,
            self.root,
            key[0],
            key[1],
            conditions.accept_encoding,
            self.chunk_size if plain else 0,
        )
        try:
            # Shielded: a cancelled request must not cancel the thread's result away, or
            # the descriptor it opened would never be closed.
            found, file = await asyncio.shield(lookup)
        except asyncio.CancelledError:
            lookup.add_done_callback(_close_opened)
            raise
        self.lookups.put(key, found, time.monotonic())
        return file

    async def _answer(self, request: Request, file: StaticFile, conditions: Conditions) -> None:
        etag = file.etag
        headers: Headers = [
            (b"etag", etag),
            (b"last-modified", http_date(file.mtime)),
            (b"cache-control", self.cache_control),
            (b"date", _now()),
        ]
        if file.vary:
            headers.append((b"vary", b"Accept-Encoding"))
        send = request.send
        if not_modified(conditions, etag, file.mtime):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        status, start, length = 200, 0, file.size
        if request.method == "GET" and conditions.range is not None:
            if_range = conditions.if_range
            if if_range is None or if_range_holds(if_range, etag, file.mtime, time.time()):
                byte_range = single_range(conditions.range, file.size)
                if byte_range is not None:
                    first, last = byte_range
                    status, start, length = 206, first, last - first + 1
                    headers.append((b"content-range", content_range(first, last, file.size)))
        headers += [
            (b"content-type", file.content_type.encode()),
            (b"content-length", b"%d" % length),
            (b"accept-ranges", b"bytes"),
        ]
        if file.coding is not None:
            headers.append((b"content-encoding", file.coding.encode()))
        if request.method == "HEAD" or length == 0:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await self._stream(request, file, start, length, status, headers)

    async def _stream(
        self,
        request: Request,
        file: StaticFile,
        start: int,
        length: int,
        status: int,
        headers: Headers,
    ) -> None:
        """The head, then ``length`` bytes from ``start``.  A chunk is read only once the
        previous one was handed to the (flow-controlled) send: a slow client holds one."""
        loop = asyncio.get_running_loop()
        send = request.send
        chunk_size = self.chunk_size
        fd = file.fd
        # The first chunk is read before the head goes out: a read error is still a clean
        # error response, and the head travels with the first bytes.
        want = min(chunk_size, length)
        if start == 0 and len(file.head) >= want:
            data = file.head[:want]
        else:
            data = await _read(loop, fd, want, start)
        _check_read(data, want)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        sent = len(data)
        if sent == length:
            await send({"type": "http.response.body", "body": data})
            return
        # A long body: notice a client that leaves (uvicorn's send then just drops our bytes).
        watcher = asyncio.create_task(_wait_for_disconnect(request))
        try:
            while True:
                await send({"type": "http.response.body", "body": data, "more_body": True})
                # Neither a send to a fast (or departed) client nor a read from the page
                # cache has to yield: give the watcher and other connections their turn.
                await asyncio.sleep(0)
                if watcher.done():
                    raise ClientDisconnected("client disconnected during a static file")
                want = min(chunk_size, length - sent)
                data = await _read(loop, fd, want, start + sent)
                _check_read(data, want)
                sent += want
                if sent == length:
                    break
            await send({"type": "http.response.body", "body": data})
        finally:
            watcher.cancel()

    async def _redirect(self, request: Request, location: bytes) -> None:
        body = b"Redirecting to " + location + b"\n"
        headers = [
            (b"location", location),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"date", _now()),
        ]
        await request.send(
            {"type": "http.response.start", "status": DIRECTORY_REDIRECT, "headers": headers}
        )
        body = body if request.method == "GET" else b""
        await request.send({"type": "http.response.body", "body": body})


async def _read(loop: asyncio.AbstractEventLoop, fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset``: what the page cache holds is read here at once, the rest
    (bytes that need the disk) in a thread, so the event loop never waits for a disk."""
    data = read_nowait(fd, size, offset)
    if len(data) < size:
        data += await loop.run_in_executor(None, os.pread, fd, size - len(data), offset + len(data))
    return data


def _close_opened(lookup: asyncio.Future[tuple[Found, StaticFile]]) -> None:
    if not lookup.cancelled() and lookup.exception() is None:
        os.close(lookup.result()[1].fd)


def _check_read(data: bytes, want: int) -> None:
    if len(data) != want:
        # The file shrank since it was opened: the promised Content-Length cannot be kept.
        raise GatewayError("the file changed while it was being sent")


async def _wait_for_disconnect(request: Request) -> None:
    # A GET's (empty) request body comes first, then only a disconnect: uvicorn reports one
    # when the client leaves, and also once the response is complete (cancelled by then).
    while (await request.receive())["type"] != "http.disconnect":
        pass


_date_cache: tuple[int, bytes] = (0, b"")


def _now() -> bytes:
    """The Date field value, formatted once per second."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, formatdate(second, usegmt=True).encode())
    return _date_cache[1]
