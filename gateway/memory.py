"""Keep idle TLS connections cheap: a fixed glibc mmap threshold.

uvloop gives every TLS connection it runs (the admin listener's; the HTTPS listener has its own
transport, ``gateway.tls.transport``, where OpenSSL reads 16 KiB records into buffers of its
own) a 256 KiB read buffer (``PyMem_RawMalloc``) and touches only
the few pages a record needs.  Allocated with ``mmap`` (glibc's default for blocks over
128 KiB), untouched pages cost nothing.  But glibc raises its mmap threshold each time such a
block is freed ("dynamic threshold"), so after the first connections close, new buffers come
from the heap instead, out of chunks earlier connections already touched: the whole buffer is
resident.  Measured with 1,000 idle TLS connections: ~50 KiB each with the dynamic threshold,
~33 KiB with a fixed one (the gateway's RSS 114 MB -> 97 MB).

Setting ``M_MMAP_THRESHOLD`` explicitly turns the dynamic adjustment off (mallopt(3)); the
value is glibc's default, so small allocations are unaffected.  Elsewhere (musl, macOS) this
is a no-op.

Also here: ``freeze_startup_heap``, which keeps the start-up objects out of the cyclic garbage
collector's way (tail latency, below).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import ssl
from typing import Any

log = logging.getLogger("gateway.memory")

M_MMAP_THRESHOLD = -3  # from <malloc.h>
MMAP_THRESHOLD = 128 * 1024  # glibc's default starting value


def freeze_startup_heap() -> None:
    """Move everything alive once the gateway is serving (modules, config, app, certificates:
    a few hundred thousand objects) to the collector's permanent generation (``gc.freeze``).

    A full collection otherwise walks all of them again, a pause of milliseconds on whichever
    request is in flight.  Measured (``bench/run.py --scenario json --scenario half-load``,
    frozen and not frozen alternating, medians of 3 rounds each): p99 of small JSON at
    saturation 9.9 / 10.2 / 11.0 ms frozen against 22.7 / 15.2 / 16.9 / 17.0 ms not; p99 at
    half load 10.0 / 12.0 / 10.3 against 9.1 / 11.1 / 11.9 / 14.3 ms (noise); CPU per request
    unchanged (163-169 against 161-170 us).
    Objects made later (a reload's new app) are collected as usual; the start-up app, once a
    reload replaced it, stays in memory where it holds reference cycles (once, bounded)."""
    gc.collect()
    gc.freeze()


def fix_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold (see the module docstring); False where not possible."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; idle TLS connections cost more memory")
        return False
    return True


# uvloop reads a TLS connection with ``SSLObject.read(256 KiB)``, and CPython allocates the
# whole length before it knows how little the record holds (it then shrinks the bytes).  Above
# the pinned threshold, every request's read was an mmap, an mremap, a munmap and a page fault:
# ~6% of a request's CPU (bench/README.md, "Hot path").  A TLS record carries at most 16 KiB,
# so asking for 64 KiB at most changes what is read not at all, only where the buffer comes from.
READ_CAP = 64 * 1024


class CappedReadSSLObject(ssl.SSLObject):
    """``SSLContext.sslobject_class`` of the gateway's TLS contexts, for the connections uvloop
    runs (the admin listener's): reads ask for at most ``READ_CAP``."""

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        if buffer is not None:
            return super().read(len, buffer)
        return super().read(min(len, READ_CAP))
