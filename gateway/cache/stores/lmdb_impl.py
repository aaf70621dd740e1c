"""``store = "shared"``: one LMDB environment that every gateway worker of this machine maps.

Why LMDB: a hit is a read transaction on memory-mapped pages (no lock, no copy until the
value is decoded, no system call), which measured ~7 µs for a 64 KiB entry where SQLite in
tmpfs took ~29 µs (bench/README.md, "Cache store").  Readers never block writers and writers
are serialised by LMDB's own robust process-shared mutex, so a crashed worker cannot leave
the store locked.  A hit that finds the same stamp as this process's decoded copy
(``codec.DecodedEntries``) costs no decoding either, and while nothing was written since
this process last read a key (the ``generation`` counter, 8 bytes of a shared memory map that
every write transaction bumps after it committed), a hit does not even open a transaction.

Layout (sub-databases of one environment; ``h`` is a 16-byte BLAKE2b of the primary key, so
URIs longer than LMDB's 511-byte key limit are fine):

- ``entries``  h + 8-byte hash of the Vary key  ->  ``codec.encode(entry)``
- ``keys``     h  ->  the primary key (for the admin API's purge by prefix)
- ``ticks``    slot  ->  recency tick + size;  ``lru``  tick  ->  slot (the eviction order)
- ``meta``     total bytes, last tick;  ``flights``  h  ->  who fetches it, until when

Recency is approximate, as in Redis or memcached: a hit moves an entry to the young end at
most once a second per process, so hits stay read-only transactions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mmap
import os
import struct
import time
from pathlib import Path

import lmdb

from gateway.cache import codec
from gateway.cache.coalescing import Coalescer, Flight
from gateway.cache.decisions import Decision
from gateway.cache.fields import HeaderPairs
from gateway.cache.policy import CachePolicy
from gateway.cache.stores import bypasses, decide
from gateway.cache.storing import StoredResponse

log = logging.getLogger("gateway.cache")

_TICK = struct.Struct(">Q")
_TICK_SIZE = struct.Struct(">QQ")
_FLIGHT = struct.Struct(">8sd")
# How often one process moves a hit entry to the young end of the eviction order.
TOUCH_INTERVAL = 1.0
# This process's decoded copies of hot entries, at most this share of max_bytes (and 8 MiB).
MEMO_SHARE = 8
MEMO_MAX_BYTES = 8 * 1024 * 1024
# Waiting for another process's fetch: LMDB has no cross-process notification, so a waiter
# polls the flight record, starting fast (a cache fill is usually ~1 ms) and backing off.
POLL_FIRST, POLL_MAX = 0.002, 0.02


def key_hash(primary_key: str) -> bytes:
    return hashlib.blake2b(primary_key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _slot(primary_key: str, entry_vary: bytes) -> bytes:
    return key_hash(primary_key) + hashlib.blake2b(entry_vary, digest_size=8).digest()


class SharedStoreError(Exception):
    """The shared store's directory cannot be used (the message says why and what to do)."""


class SharedStore:
    """Stored responses in the LMDB environment at ``directory`` (created when missing)."""

    def __init__(
        self, directory: Path, max_bytes: int, max_entry_bytes: int, policy: CachePolicy
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.policy = policy
        # Room for the entries plus LMDB's free pages held by readers of older snapshots.
        self.env = _environment(directory, 2 * max_bytes + 32 * 1024 * 1024)
        self._entries = self.env.open_db(b"entries")
        self._keys = self.env.open_db(b"keys")
        self._ticks = self.env.open_db(b"ticks")
        self._lru = self.env.open_db(b"lru")
        self._meta = self.env.open_db(b"meta")
        self._flights = self.env.open_db(b"flights")
        self._memo = codec.DecodedEntries(min(max_bytes // MEMO_SHARE, MEMO_MAX_BYTES))
        self._generation = _generation_map(directory)
        # Per primary key: the generation it was read at, its entries and their slots.
        self._validated: dict[str, tuple[int, list[StoredResponse], list[bytes]]] = {}
        self._validated_bytes = 0
        self._touched: dict[bytes, float] = {}
        self._bad_logged = False

    # --- the interface ------------------------------------------------------------------------

    def __len__(self) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self._entries)["entries"])

    @property
    def current_bytes(self) -> int:
        with self.env.begin(db=self._meta) as txn:
            return _read_int(txn.get(b"bytes"))

    def __contains__(self, primary_key: object) -> bool:
        if not isinstance(primary_key, str):
            return False
        with self.env.begin(db=self._keys) as txn:
            return txn.get(key_hash(primary_key)) is not None

    async def lookup(
        self, primary_key: str, method: str, request_headers: HeaderPairs, now: float
    ) -> Decision:
        if bypasses(method, request_headers):
            return decide(None, method, request_headers, now)
        generation = _GENERATION.unpack_from(self._generation)[0]
        validated = self._validated.get(primary_key)
        if validated is not None and validated[0] == generation:
            entries, slots = validated[1], validated[2]
        else:
            entries, slots = self._variants(primary_key)
            self._remember(primary_key, generation, entries, slots)
        decision = decide(entries, method, request_headers, now)
        if decision.entry is not None:
            self._touch(slots[entries.index(decision.entry)])
        return decision

    async def put(self, primary_key: str, entry: StoredResponse) -> bool:
        if len(entry.body) > self.max_entry_bytes or entry.size > self.max_bytes:
            return False
        value = codec.encode(entry)
        slot = _slot(primary_key, codec.encode_vary(entry.vary))
        try:
            with self.env.begin(write=True) as txn:
                total = _read_int(txn.get(b"bytes", db=self._meta))
                total -= self._unlink(txn, slot)
                while total + entry.size > self.max_bytes:
                    total -= self._evict_oldest(txn)
                tick = _read_int(txn.get(b"tick", db=self._meta)) + 1
                txn.put(slot, value, db=self._entries)
                txn.put(slot[:16], primary_key.encode("utf-8", "surrogatepass"), db=self._keys)
                txn.put(slot, _TICK_SIZE.pack(tick, entry.size), db=self._ticks)
                txn.put(_TICK.pack(tick), slot, db=self._lru)
                txn.put(b"tick", _TICK.pack(tick), db=self._meta)
                txn.put(b"bytes", _TICK.pack(total + entry.size), db=self._meta)
            self._bump()
        except lmdb.MapFullError:
            log.warning("shared cache %s is full; %s not stored", self.directory, primary_key)
            return False
        self._memo.add(slot, codec.stamp_of(value), entry)
        return True

    async def invalidate(self, primary_key: str) -> int:
        prefix = key_hash(primary_key)
        count = 0
        with self.env.begin(write=True) as txn:
            slots = self._slots(txn, prefix)
            total = _read_int(txn.get(b"bytes", db=self._meta))
            for slot in slots:
                total -= self._unlink(txn, slot)
                count += 1
            if count:
                txn.put(b"bytes", _TICK.pack(total), db=self._meta)
        if count:
            self._bump()
        return count

    async def primary_keys(self) -> list[str]:
        with self.env.begin(db=self._keys) as txn:
            return [v.decode("utf-8", "surrogatepass") for _, v in txn.cursor()]

    async def usage(self) -> tuple[int, int]:
        return len(self), self.current_bytes

    def coalescer(self, timeout: float) -> Coalescer:
        return SharedCoalescer(self, timeout)

    def generation(self) -> int:
        """The shared counter every committed write bumps (``_bump``)."""
        value: int = _GENERATION.unpack_from(self._generation)[0]
        return value

    async def aclose(self) -> None:
        """Nothing to release: the environment stays open for the process (a reload's new
        store uses it again; LMDB refuses to open one environment twice in a process)."""
        self._memo.clear()

    # --- what this process has read --------------------------------------------------------

    def _remember(
        self, key: str, generation: int, entries: list[StoredResponse], slots: list[bytes]
    ) -> None:
        size = sum(entry.size for entry in entries)
        old = self._validated.pop(key, None)
        if old is not None:
            self._validated_bytes -= sum(entry.size for entry in old[1])
        if self._validated_bytes + size > self._memo.max_bytes or len(self._validated) > 4096:
            self._validated.clear()
            self._validated_bytes = 0
        self._validated[key] = (generation, entries, slots)
        self._validated_bytes += size

    def _bump(self) -> None:
        """After a write committed: every process's ``_validated`` is out of date.  After the
        commit, so that a reader who saw the new number also sees the new data; inside an
        (empty) write transaction, so that LMDB's writer lock serialises the increments and
        none is lost to a concurrent writer."""
        with self.env.begin(write=True):
            value = _GENERATION.unpack_from(self._generation)[0]
            _GENERATION.pack_into(self._generation, 0, (value + 1) & 0xFFFFFFFFFFFFFFFF)

    # --- inside transactions ------------------------------------------------------------------

    def _variants(self, primary_key: str) -> tuple[list[StoredResponse], list[bytes]]:
        prefix = key_hash(primary_key)
        entries: list[StoredResponse] = []
        slots: list[bytes] = []
        with self.env.begin(db=self._entries, buffers=True) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix):
                return entries, slots
            for raw_slot, value in cursor:
                slot = bytes(raw_slot)
                if slot[:16] != prefix:
                    break
                stamp = codec.stamp_of(value)
                entry = self._memo.get(slot, stamp)
                if entry is None:
                    try:
                        entry = codec.decode(bytes(value), self.policy)
                    except codec.CodecError as exc:
                        self._log_bad(exc)
                        continue
                    self._memo.add(slot, stamp, entry)
                entries.append(entry)
                slots.append(slot)
        return entries, slots

    def _slots(self, txn: lmdb.Transaction, prefix: bytes) -> list[bytes]:
        cursor = txn.cursor(db=self._entries)
        slots: list[bytes] = []
        if cursor.set_range(prefix):
            for slot in cursor.iternext(values=False):
                if slot[:16] != prefix:
                    break
                slots.append(bytes(slot))
        return slots

    def _unlink(self, txn: lmdb.Transaction, slot: bytes) -> int:
        """Remove ``slot`` everywhere; the bytes it held (0 when absent)."""
        self._memo.discard(slot)
        meta = txn.pop(slot, db=self._ticks)
        if meta is None:
            return 0
        tick, size = _TICK_SIZE.unpack(meta)
        txn.delete(_TICK.pack(tick), db=self._lru)
        txn.delete(slot, db=self._entries)
        if not self._slots(txn, slot[:16]):
            txn.delete(slot[:16], db=self._keys)
        return int(size)

    def _evict_oldest(self, txn: lmdb.Transaction) -> int:
        cursor = txn.cursor(db=self._lru)
        if not cursor.first():
            raise AssertionError("cache bytes accounted for but no entry left to evict")
        return self._unlink(txn, bytes(cursor.value()))

    def _touch(self, slot: bytes) -> None:
        now = time.monotonic()
        if self._touched.get(slot, 0.0) > now - TOUCH_INTERVAL:
            return
        if len(self._touched) > 10_000:
            self._touched.clear()
        self._touched[slot] = now
        with self.env.begin(write=True) as txn:
            meta = txn.get(slot, db=self._ticks)
            if meta is None:
                return  # evicted meanwhile
            old, size = _TICK_SIZE.unpack(meta)
            tick = _read_int(txn.get(b"tick", db=self._meta)) + 1
            txn.delete(_TICK.pack(old), db=self._lru)
            txn.put(_TICK.pack(tick), slot, db=self._lru)
            txn.put(slot, _TICK_SIZE.pack(tick, size), db=self._ticks)
            txn.put(b"tick", _TICK.pack(tick), db=self._meta)

    def _log_bad(self, exc: Exception) -> None:
        if not self._bad_logged:
            self._bad_logged = True
            log.warning("shared cache %s: skipping an unreadable entry: %s", self.directory, exc)

    # --- flights (request coalescing across processes) ----------------------------------------

    def begin_flight(self, primary_key: str, token: bytes, hold: float) -> bool:
        """Record this process as fetching ``primary_key`` for at most ``hold`` seconds;
        False when another fetch is recorded and has not expired."""
        prefix = key_hash(primary_key)
        now = time.time()
        with self.env.begin(write=True, db=self._flights) as txn:
            current = txn.get(prefix)
            if current is not None and _FLIGHT.unpack(current)[1] > now:
                return False
            txn.put(prefix, _FLIGHT.pack(token, now + hold))
        return True

    def end_flight(self, primary_key: str, token: bytes) -> None:
        prefix = key_hash(primary_key)
        with self.env.begin(write=True, db=self._flights) as txn:
            current = txn.get(prefix)
            if current is not None and _FLIGHT.unpack(current)[0] == token:
                txn.delete(prefix)

    def in_flight(self, primary_key: str) -> bool:
        with self.env.begin(db=self._flights) as txn:
            current = txn.get(key_hash(primary_key))
        return current is not None and _FLIGHT.unpack(current)[1] > time.time()


class SharedFlight(Flight):
    """A flight that also holds the key's record in the shared store."""

    __slots__ = ("store", "token")

    def __init__(
        self, key: str, flights: dict[str, Flight], store: SharedStore, token: bytes
    ) -> None:
        super().__init__(key, flights)
        self.store = store
        self.token = token

    def release(self) -> None:
        if not self.released:
            self.store.end_flight(self.key, self.token)
        super().release()


class SharedCoalescer(Coalescer):
    """``Coalescer`` across processes: in-process waiters wait on the local flight as before;
    a process whose peer leads polls the peer's flight record until it ends or ``timeout``."""

    def __init__(self, store: SharedStore, timeout: float) -> None:
        super().__init__(timeout)
        self.store = store

    def try_lead(self, key: str) -> Flight | None:
        if key in self._flights:
            return None
        token = os.urandom(8)
        # Held a little past the waiters' timeout: a leader that died frees the key by then.
        if not self.store.begin_flight(key, token, self.timeout + 1.0):
            return None
        flight = self._flights[key] = SharedFlight(key, self._flights, self.store, token)
        return flight

    async def wait(self, key: str, timeout: float | None = None) -> bool:
        if key in self._flights:
            return await super().wait(key, timeout)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        interval = POLL_FIRST
        while self.store.in_flight(key):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(interval, left))
            interval = min(interval * 2, POLL_MAX)
        return True


_GENERATION = struct.Struct("=Q")
# One generation map per directory and process.
_GENERATIONS: dict[Path, mmap.mmap] = {}


def _generation_map(directory: Path) -> mmap.mmap:
    directory = directory.resolve()
    mapped = _GENERATIONS.get(directory)
    if mapped is None:
        fd = os.open(directory / "generation", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _GENERATION.size:
                os.ftruncate(fd, _GENERATION.size)
            mapped = _GENERATIONS[directory] = mmap.mmap(fd, _GENERATION.size)
        finally:
            os.close(fd)
    return mapped


# One environment per directory and process, shared by every SharedStore opened on it.
_ENVIRONMENTS: dict[Path, lmdb.Environment] = {}


def _environment(directory: Path, map_size: int) -> lmdb.Environment:
    directory = directory.resolve()
    env = _ENVIRONMENTS.get(directory)
    if env is None:
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            env = lmdb.open(
                str(directory),
                map_size=map_size,
                max_dbs=8,
                sync=False,  # a cache: nothing needs to survive a power cut
                metasync=False,
                mode=0o600,
            )
        except (OSError, lmdb.Error) as exc:
            raise SharedStoreError(
                f'[cache] store = "shared": cannot open {directory} ({exc}); the directory '
                'must be writable by the gateway, or use store = "memory"'
            ) from exc
        env.reader_check()  # slots of readers that died with their process
        _ENVIRONMENTS[directory] = env
    elif env.info()["map_size"] < map_size:
        env.set_mapsize(map_size)  # a reload raised max_bytes
    return env


def _read_int(value: bytes | None) -> int:
    return _TICK.unpack(value)[0] if value is not None else 0
