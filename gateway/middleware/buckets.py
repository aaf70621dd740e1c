"""Token buckets per client, in a fixed-size table every gateway worker process shares.

The rule is the classic token bucket (Traefik's ``average``/``burst``): a client may spend
up to ``burst`` requests at once and gets ``rate`` tokens back per second.  ``take_token``
is that rule as a pure function of (tokens, stamp, now), unit-tested with no clock.

Where the buckets live.  ``[gateway] workers = N`` runs N processes behind one socket; with a
bucket per process a client would get N times its limit.  So the buckets live in one table
of fixed-size slots in a shared memory mapping: anonymous memory for a single process, a
file under the temp directory (named after the config, the listener and the middleware)
that every worker maps for several.  A slot is (key hash, tokens, stamp); the key is hashed
with BLAKE2b, which every process computes alike (``hash()`` is salted per process).  Each
take runs under a POSIX record lock on the file (``lockf``, a pair of syscalls), so two
workers never interleave on one bucket.  The stamps are ``time.monotonic()``, one clock for
every process of a Linux machine.  Every process using a file also holds a shared ``flock``
on it for its lifetime (independent of the record locks): a file nobody holds any more is
left over from an earlier run, and the next gateway to open a table removes it.

Memory stays bounded whatever the number of client addresses: the table never grows.  A key
looks at ``PROBES`` slots from its hash; an empty slot, its own, or one whose bucket has
filled up again since its last use (an idle bucket is the same as no bucket) is taken; if
all are busy, the least recently used one is overwritten.  That can only ever give a client
a fresh, full bucket - never refuse one wrongly.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SLOT = struct.Struct("<Qdd")  # key hash (0 = empty), tokens, stamp
SLOTS = 16384  # 384 KiB per middleware
PROBES = 8


def take_token(
    tokens: float, stamp: float, now: float, rate: float, burst: float
) -> tuple[float, float]:
    """Refill since ``stamp`` and spend one token: ``(tokens left, wait)``, where ``wait`` is
    0 when the request may pass, else the seconds until a token is back (nothing spent)."""
    tokens = min(burst, tokens + max(0.0, now - stamp) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate


def key_hash(key: bytes) -> int:
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    return value or 1  # 0 marks an empty slot


class BucketTable:
    """The shared table (see the module docstring).  ``clock`` is injectable for tests."""

    def __init__(
        self,
        rate: float,
        burst: float,
        path: Path | None = None,
        *,
        slots: int = SLOTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.slots = slots
        self.clock = clock
        size = slots * SLOT.size
        self.fd: int | None = None
        if path is None:
            self.memory = mmap.mmap(-1, size)
            return
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        remove_abandoned(path.parent, keep=path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # "in use", until this process exits
            fcntl.lockf(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)  # zero-filled: every slot empty
            fcntl.lockf(fd, fcntl.LOCK_UN)
            self.memory = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def take(self, key: bytes) -> float:
        """Spend a token of ``key``'s bucket: 0.0 if it had one, else seconds to wait."""
        fd = self.fd
        if fd is None:
            return self._take(key)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            return self._take(key)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)

    def give_back(self, key: bytes) -> None:
        """Return a token taken from ``key``'s bucket (a reservation that was not needed)."""
        fd = self.fd
        if fd is not None:
            fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            h = key_hash(key)
            for offset in self._offsets(h):
                slot_hash, tokens, stamp = SLOT.unpack_from(self.memory, offset)
                if slot_hash == h:
                    SLOT.pack_into(self.memory, offset, h, min(self.burst, tokens + 1.0), stamp)
                    return
        finally:
            if fd is not None:
                fcntl.lockf(fd, fcntl.LOCK_UN)

    def wait(self, key: bytes) -> float:
        """Seconds until ``key`` has a token (0.0: it has one now); spends nothing."""
        fd = self.fd
        if fd is None:
            return self._wait(key)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            return self._wait(key)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)

    def _wait(self, key: bytes) -> float:
        h = key_hash(key)
        now = self.clock()
        for offset in self._offsets(h):
            slot_hash, tokens, stamp = SLOT.unpack_from(self.memory, offset)
            if slot_hash == h:
                return take_token(tokens, stamp, now, self.rate, self.burst)[1]
        return 0.0

    def _offsets(self, h: int) -> list[int]:
        first = h % self.slots
        return [((first + i) % self.slots) * SLOT.size for i in range(PROBES)]

    def _take(self, key: bytes) -> float:
        h = key_hash(key)
        now = self.clock()
        memory, rate, burst = self.memory, self.rate, self.burst
        free: int | None = None
        oldest: tuple[float, int] | None = None
        for offset in self._offsets(h):
            slot_hash, tokens, stamp = SLOT.unpack_from(memory, offset)
            if slot_hash == h:
                tokens, wait = take_token(tokens, stamp, now, rate, burst)
                if not wait:
                    SLOT.pack_into(memory, offset, h, tokens, now)
                return wait
            if free is None and (slot_hash == 0 or tokens + (now - stamp) * rate >= burst):
                free = offset
            if oldest is None or stamp < oldest[0]:
                oldest = (stamp, offset)
        if free is None:
            assert oldest is not None
            free = oldest[1]
        # A new bucket starts full, less this request's token.
        SLOT.pack_into(memory, free, h, burst - 1.0, now)
        return 0.0

    def close(self) -> None:
        self.memory.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# A file this old that no process holds is a leftover; younger ones may be just being opened.
ABANDONED_AFTER = 60.0


def remove_abandoned(directory: Path, keep: Path) -> None:
    """Delete the tables of gateways that are gone (see the module docstring)."""
    now = time.time()
    for path in directory.glob("buckets-*"):
        if path == keep:
            continue
        try:
            if now - path.stat().st_mtime < ABANDONED_AFTER:
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # removed meanwhile by another process doing the same
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # in use
        else:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def shared_table_path(*parts: object) -> Path:
    """Where the workers of one gateway find a middleware's table: the same name for the
    same config, listener and middleware settings, under a per-user directory."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"pygateway-{os.getuid()}" / f"buckets-{digest}"
