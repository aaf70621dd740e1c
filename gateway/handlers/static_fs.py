"""The file-system side of static files: a request path to a file inside the root, opened.

1. The path (pure).  The request path is split on "/" *before* percent-decoding, and each
   segment is decoded on its own, so an encoded "/" (``%2f``) can never make a new segment.
   Dot segments (``..`` in any spelling), and segments holding "/", a backslash or NUL once
   decoded, are refused with 400; a segment starting with "." (a dotfile or dot-directory)
   is a 404.
2. The file (blocking calls, for a thread).  ``resolve`` walks the segments below the root
   with ``lstat``; past a symlink it takes ``realpath`` and checks that the target is still
   inside the root, with no dot segment below it.  A directory is served by its
   ``index.html`` (never listed); a directory URL without its trailing slash is redirected
   first, so relative links in the page resolve.  Precompressed sidecars (``NAME.br``,
   ``NAME.gz``) are found next to the file.  The file is opened and ``fstat``-ed, so the
   validators describe the very bytes that are read.
3. ``Lookups`` keeps recent lookups for a second (Nginx's ``open_file_cache``, names only),
   and ``read_nowait`` reads what the page cache holds without waiting: together they let
   a hot file be served with no trip to a thread at all.

Not handled: a directory inside the root swapped for a symlink between the walk and the open
(only someone who can already write the root could do that; O_NOFOLLOW covers the last name).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from gateway.errors import NotFound, RequestRejected
from gateway.handlers.static_http import choose_coding, content_type, entity_tag

INDEX = "index.html"
# How long a lookup (which real file, which sidecars) is reused: see ``Lookups``.
LOOKUP_TTL = 1.0
LOOKUP_ENTRIES = 4096
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)
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


# --- 2. the file (blocking: for a thread) ----------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class Found:
    """Where the file for a request path is: the result of a lookup, kept by ``Lookups``."""

    path: str  # real path of the file itself
    content_type: str  # by the requested name's extension (a symlink's target may differ)
    sidecars: tuple[tuple[str, str], ...]  # (coding, real path) in SIDECARS order


def find(root: str, segments: Sequence[str], directory: bool) -> Found:
    """The file for ``segments`` under the (real) ``root``, and its sidecars.

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
    sidecars = []
    for coding, suffix in SIDECARS:
        found = resolve(root, parent, (name + suffix,))
        if found is not None and stat.S_ISREG(found[1].st_mode):
            sidecars.append((coding, found[0]))
    return Found(real, content_type(name), tuple(sidecars))


def open_found(found: Found, accept_encoding: bytes | None, prefetch: int = 0) -> StaticFile:
    """The representation of ``found`` that Accept-Encoding selects, opened, with its first
    ``prefetch`` bytes read.  NotFound if it is gone (or no longer a regular file)."""
    coding = choose_coding(accept_encoding, [c for c, _ in found.sidecars])
    path = dict(found.sidecars)[coding] if coding else found.path
    try:
        fd = os.open(path, _OPEN_FLAGS)
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
    return StaticFile(
        fd, st.st_size, st.st_mtime_ns, found.content_type, coding, bool(found.sidecars), head
    )


def find_and_open(
    root: str,
    segments: Sequence[str],
    directory: bool,
    accept_encoding: bytes | None,
    prefetch: int = 0,
) -> tuple[Found, StaticFile]:
    """``find`` then ``open_found``: everything blocking, for one trip to a thread."""
    found = find(root, segments, directory)
    return found, open_found(found, accept_encoding, prefetch)


class Lookups:
    """Recent successful lookups, like Nginx's ``open_file_cache`` (names only, no file
    descriptors, no content): for ``ttl`` seconds a request for the same path skips the
    walk and its thread hop, and only opens the real path it found.

    So a new, replaced or removed sidecar or index is noticed within ``ttl``; the bytes and
    the validators are always the current file's (they come from the open descriptor), and
    a file that is gone makes the caller look it up afresh.  Bounded by ``size`` entries,
    the oldest dropped first; misses are not kept, so unknown paths cannot fill it.
    """

    def __init__(self, ttl: float = LOOKUP_TTL, size: int = LOOKUP_ENTRIES) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[tuple[tuple[str, ...], bool], tuple[float, Found]] = {}

    def get(self, key: tuple[tuple[str, ...], bool], now: float) -> Found | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry[0] >= self.ttl:
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: tuple[tuple[str, ...], bool], found: Found, now: float) -> None:
        entries = self._entries
        entries.pop(key, None)
        if len(entries) >= self.size:
            del entries[next(iter(entries))]
        entries[key] = (now, found)

    def discard(self, key: tuple[tuple[str, ...], bool]) -> None:
        self._entries.pop(key, None)


def read_nowait(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` if the page cache holds them, without ever waiting
    for the disk (``preadv2`` with RWF_NOWAIT): b"" when nothing could be read at once."""
    if _RWF_NOWAIT is None:
        return b""
    buffer = bytearray(size)
    try:
        count = os.preadv(fd, [buffer], offset, _RWF_NOWAIT)
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: this filesystem cannot tell
        return b""
    return bytes(buffer) if count == size else bytes(buffer[:count])
