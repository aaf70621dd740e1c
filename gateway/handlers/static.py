"""Static files: the ``static = "DIR"`` route handler (Nginx ``root`` with ``gzip_static``,
Caddy ``file_server`` with ``precompressed``).

Theory of operation.  A request goes through three steps, each its own part of this module:

1. The path (pure).  The request path, relative to the route's prefix with ``strip_prefix``,
   is split on "/" *before* percent-decoding, and each segment is decoded on its own, so an
   encoded "/" (``%2f``) can never make a new segment.  Dot segments (``..`` in any
   spelling), and segments holding "/", a backslash or NUL once decoded, are refused with 400;
   a segment starting with "." (a dotfile or dot-directory) is a 404.
2. The file (blocking filesystem calls, run in a thread).  The path under the root is resolved
   with ``realpath`` (following symlinks) and must still lie inside the root, with no dot
   segment below it; it is opened and ``fstat``-ed, so the validators describe the very bytes
   that are read.  A directory is served by its ``index.html`` (never listed); a directory URL
   without its trailing slash is redirected to the slash form first, so relative links in the
   page resolve.  Precompressed sidecars (``NAME.br``, ``NAME.gz``) are looked up next to the
   file and chosen by Accept-Encoding.
3. The answer (the pure rules live in ``static_http``).  In RFC 9110 §13.2.2's order:
   If-None-Match (else If-Modified-Since) may answer 304; then a single byte ``Range``
   (checked against If-Range) answers 206, or 416 when it lies outside the file.  Several
   ranges are answered 200 with the whole file (a server may ignore Range; multipart/
   byteranges is not built).
   The body is read with ``os.pread`` in a thread, ``CHUNK_SIZE`` bytes at a time, never
   whole; each chunk is sent before the next is read, so a slow client holds one chunk.

Every failure is a ``gateway.errors`` type, which ``GatewayApp`` renders as the gateway's JSON
error.  Not handled: If-Match / If-Unmodified-Since (no 412; these are for writes), and a
resolution race where a directory inside the root is swapped for a symlink between the
``realpath`` check and the open (only someone who can already write the root could do that).
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes

from gateway.errors import (
    ClientDisconnected,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    RequestRejected,
)
from gateway.handlers.static_http import (
    Conditions,
    choose_coding,
    content_range,
    content_type,
    entity_tag,
    http_date,
    if_range_holds,
    not_modified,
    single_range,
)
from gateway.headers import Headers
from gateway.request import Request

# Bytes read and sent at a time.  Measured over TLS on a 2-core box (1 GiB from the page cache
# to curl, 3 rounds): 64 KiB took 2.0-2.4 s and 1.5-1.7 s of gateway CPU, 256 KiB 1.4-1.6 s
# and 1.0-1.1 s, 1 MiB 1.1-1.5 s and 0.8-1.0 s.  256 KiB keeps most of the gain while a slow
# client holds a quarter of what 1 MiB would make it hold.
CHUNK_SIZE = 256 * 1024
ALLOW = "GET, HEAD"
# The status of the trailing-slash redirect for a directory URL (Caddy's choice; Nginx 301).
DIRECTORY_REDIRECT = 308
INDEX = "index.html"
# Sidecar codings in the server's order of preference when the client's q-values tie.
SIDECARS: tuple[tuple[str, str], ...] = (("br", ".br"), ("gzip", ".gz"))


# --- 1. the path --------------------------------------------------------------------------------


def path_segments(raw_path: bytes) -> tuple[str, ...]:
    """The file path named by a raw (still percent-encoded) request path, as segments.

    Empty segments (``//``, a trailing "/") are dropped.  RequestRejected (400) for a path
    that tries to leave its directory; NotFound (404) for a dotfile or a name no file can have.
    """
    segments: list[str] = []
    for raw in raw_path.split(b"/"):
        if not raw:
            continue
        try:
            name = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise NotFound("no such file (the path is not UTF-8)") from None
        if name in (".", ".."):
            raise RequestRejected("the path has a '.' or '..' segment")
        if "/" in name or "\\" in name or "\x00" in name:
            raise RequestRejected("the path has an encoded '/', a backslash or a NUL byte")
        if name.startswith("."):
            raise NotFound("dotfiles are not served")
        segments.append(name)
    return tuple(segments)


def inside(root: str, real_path: str) -> bool:
    """Whether the resolved ``real_path`` is ``root`` or below it, with no dot segment
    below it (a symlink may lead to a dotfile inside the root)."""
    if real_path == root:
        return True
    if not real_path.startswith(root) or real_path[len(root)] != os.sep:
        return False
    return not any(part.startswith(".") for part in real_path[len(root) + 1 :].split(os.sep))


def directory_location(raw_path: bytes, query: bytes) -> bytes:
    """Location of the slash form of a directory URL.  Leading slashes are collapsed to one:
    ``//evil.example`` would be a scheme-relative URL, an open redirect."""
    target = b"/" + raw_path.lstrip(b"/") + b"/"
    return target + b"?" + query if query else target


# --- 2. the file (blocking: run in a thread) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One representation of a file, opened: the file itself or a sidecar."""

    fd: int
    size: int
    mtime_ns: int
    content_type: str
    coding: str | None  # Content-Encoding of a sidecar
    vary: bool  # a sidecar exists: the answer depends on Accept-Encoding
    head: bytes = b""  # the first bytes, when they were asked for (``prefetch``)

    @property
    def etag(self) -> bytes:
        return entity_tag(self.size, self.mtime_ns, self.coding)

    @property
    def mtime(self) -> int:
        return self.mtime_ns // 1_000_000_000


class DirectoryWithoutSlash(Exception):
    """A directory was asked for without the trailing slash: redirect to the slash form."""


def resolve(root: str, base: str, names: Sequence[str]) -> tuple[str, os.stat_result] | None:
    """``base`` (a real directory inside ``root``) joined with ``names``, symlinks resolved,
    and the target's status; None when something is missing on the way, or the path leads
    outside ``root`` or to a dot name.

    One ``lstat`` per name for the usual tree without symlinks; past a symlink, ``realpath``
    of the rest and the containment check.  The names themselves hold no "/" and no dot
    segment (``path_segments``), so without a symlink the path cannot leave ``root``.
    """
    path = base
    st = None
    for i, name in enumerate(names):
        candidate = path + os.sep + name
        try:
            st = os.lstat(candidate)
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(os.path.join(candidate, *names[i + 1 :]))
                return (real, os.stat(real)) if inside(root, real) else None
        except OSError:  # missing, not a directory, permission, name too long, loop ...
            return None
        path = candidate
    if st is None:
        return None
    return path, st


# O_NOFOLLOW: the last name cannot have become a symlink since ``resolve`` looked at it.
# O_NONBLOCK: should that race put a FIFO there, opening it does not hang a thread.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def open_file(
    root: str,
    segments: Sequence[str],
    directory: bool,
    accept_encoding: bytes | None,
    prefetch: int = 0,
) -> StaticFile:
    """The representation to serve for ``segments`` under the (real) ``root``, opened, with
    its first ``prefetch`` bytes read (one thread hop instead of two for a small file).

    ``directory``: the URL ends in "/".  NotFound when there is nothing to serve;
    DirectoryWithoutSlash for a directory URL without its trailing slash.  Sidecars are
    looked up by the requested name (``app.js.br`` next to ``app.js``), as Nginx does.
    """
    parent, name = root, ""
    if len(segments) > 1:
        found = resolve(root, root, segments[:-1])
        if found is None or not stat.S_ISDIR(found[1].st_mode):
            raise NotFound("no such file")
        parent = found[0]
    if segments:
        name = segments[-1]
        found = resolve(root, parent, (name,))
        if found is None:
            raise NotFound("no such file")
        real, st = found
    else:
        real, st = root, os.stat(root)
    if stat.S_ISDIR(st.st_mode):
        if not directory:
            raise DirectoryWithoutSlash
        parent, name = real, INDEX
        found = resolve(root, parent, (INDEX,))
        if found is None or not stat.S_ISREG(found[1].st_mode):
            raise NotFound("no index.html in this directory (directory listings are not served)")
        real, st = found
    elif directory or not stat.S_ISREG(st.st_mode):
        raise NotFound("no such file")

    sidecars: dict[str, str] = {}
    for sidecar_coding, suffix in SIDECARS:
        found = resolve(root, parent, (name + suffix,))
        if found is not None and stat.S_ISREG(found[1].st_mode):
            sidecars[sidecar_coding] = found[0]
    coding = choose_coding(accept_encoding, list(sidecars))
    try:
        fd = os.open(sidecars[coding] if coding else real, _OPEN_FLAGS)
    except OSError:
        raise NotFound("no such file") from None
    try:
        # The validators describe the bytes actually read: those of the open file.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotFound("no such file")
        head = os.pread(fd, min(prefetch, st.st_size), 0) if prefetch else b""
    except BaseException:
        os.close(fd)
        raise
    kind = content_type(name)
    return StaticFile(fd, st.st_size, st.st_mtime_ns, kind, coding, bool(sidecars), head)


# --- the handler (asyncio) ----------------------------------------------------------------------


class StaticHandler:
    """Serves files below ``root``; ``cache_control`` goes on every file it serves."""

    def __init__(self, root: Path, cache_control: str, chunk_size: int = CHUNK_SIZE) -> None:
        self.root = os.path.realpath(root)
        self.cache_control = cache_control.encode()
        self.chunk_size = chunk_size

    async def __call__(self, request: Request) -> None:
        method = request.method
        if method != "GET" and method != "HEAD":
            raise MethodNotAllowed(f"{method} is not allowed on static files", ALLOW)
        scope = request.scope
        raw_path: bytes = scope["raw_path"]
        segments = path_segments(request.route.relative_path(raw_path))
        conditions = Conditions.from_headers(request.headers)
        # A plain GET gets the first chunk read with the lookup: no second thread hop.
        plain = method == "GET" and conditions.if_none_match is None
        plain = plain and conditions.if_modified_since is None and conditions.range is None
        loop = asyncio.get_running_loop()
        try:
            file = await loop.run_in_executor(
                None,
                open_file,
                self.root,
                segments,
                raw_path.endswith(b"/"),
                conditions.accept_encoding,
                self.chunk_size if plain else 0,
            )
        except DirectoryWithoutSlash:
            await self._redirect(request, directory_location(raw_path, scope["query_string"]))
            return
        try:
            await self._answer(request, file, conditions)
        finally:
            os.close(file.fd)

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
        """The head, then ``length`` bytes from ``start``, one chunk read ahead of none: a
        chunk is read only after the previous one was handed to the (flow-controlled) send."""
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
            data = await loop.run_in_executor(None, os.pread, fd, want, start)
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
                if watcher.done():
                    raise ClientDisconnected("client disconnected during a static file")
                want = min(chunk_size, length - sent)
                data = await loop.run_in_executor(None, os.pread, fd, want, start + sent)
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
        _date_cache = (second, http_date(second))
    return _date_cache[1]
