"""The worker's connections to the shared SQLite database and its transactions.

Theory of operation: every worker process opens a small pool of aiosqlite connections to the
one database file (WAL mode, set by ``migrations.migrate``).  A connection is lent to exactly
one task at a time, so one task's transaction never sees another's statements.  Work is passed
in as a function of the connection:

* ``read(work)`` runs it in a deferred transaction (one consistent snapshot; WAL readers never
  wait for writers);
* ``write(work)`` runs it in ``BEGIN IMMEDIATE``, which takes the database's write lock up front.
  A read-modify-write (check a refresh token, then rotate it) therefore cannot interleave with
  another worker's, and lock waits happen at BEGIN under ``busy_timeout`` instead of as a
  deadlock on upgrade.  If the lock stays busy past the timeout the whole function is retried a
  few times with jitter, then the client gets a 503, never "database is locked".
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import aiosqlite

from . import migrations
from .errors import ServiceUnavailable

log = logging.getLogger("backend.db")

T = TypeVar("T")
Work = Callable[[aiosqlite.Connection], Awaitable[T]]

POOL_SIZE = 4
BUSY_RETRIES = 3


class DatabaseUnavailable(ServiceUnavailable):
    def __init__(self, message: str = "The database is unavailable.") -> None:
        super().__init__(message, headers={"Retry-After": "1"})


def is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, including extended codes such as BUSY_SNAPSHOT."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(exc) or "busy" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class Database:
    def __init__(self, path: Path, *, pool_size: int = POOL_SIZE) -> None:
        self.path = path
        self.pool_size = pool_size
        self._idle: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all: set[aiosqlite.Connection] = set()
        self._closed = True

    async def open(self) -> None:
        await asyncio.to_thread(migrations.migrate, self.path)
        self._closed = False
        for _ in range(self.pool_size):
            conn = await self._connect()
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        self._closed = True
        # Connections lent out are closed when they come back (see ``_lend``).
        while not self._idle.empty():
            await self._discard(self._idle.get_nowait())

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        self._all.add(conn)
        try:
            conn.row_factory = sqlite3.Row
            busy_ms = int(migrations.BUSY_TIMEOUT_SECONDS * 1000)
            await conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            await self._discard(conn)
            raise
        return conn

    async def _discard(self, conn: aiosqlite.Connection) -> None:
        self._all.discard(conn)
        try:
            await conn.close()
        except Exception:  # already broken; nothing more to release
            log.debug("closing a broken connection failed", exc_info=True)

    @asynccontextmanager
    async def _lend(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._closed:
            raise DatabaseUnavailable()
        conn = await self._idle.get()
        healthy = False
        try:
            yield conn
            healthy = True
        finally:
            if self._closed:
                await self._discard(conn)
            elif healthy or not conn.in_transaction:
                self._idle.put_nowait(conn)
            else:
                # A transaction the rollback could not end: never lend this connection again.
                await self._discard(conn)
                self._idle.put_nowait(await self._connect())

    async def _transaction(self, begin: str, work: Work[T]) -> T:
        for attempt in range(BUSY_RETRIES + 1):
            try:
                async with self._lend() as conn:
                    await conn.execute(begin)
                    try:
                        result = await work(conn)
                        await conn.execute("COMMIT")
                    except BaseException:
                        # Also on cancellation, so the connection goes back to the pool clean.
                        if conn.in_transaction:
                            await conn.execute("ROLLBACK")
                        raise
                    return result
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                log.warning("database busy (attempt %d of %d)", attempt + 1, BUSY_RETRIES + 1)
                if attempt < BUSY_RETRIES:
                    await asyncio.sleep(random.uniform(0.02, 0.1) * 2**attempt)
            except ValueError as exc:
                # aiosqlite's "Connection closed": the pool was closed under us.
                if self._closed:
                    raise DatabaseUnavailable() from exc
                raise
        raise DatabaseUnavailable("The database is busy; try again.")

    async def read(self, work: Work[T]) -> T:
        return await self._transaction("BEGIN DEFERRED", work)

    async def write(self, work: Work[T]) -> T:
        return await self._transaction("BEGIN IMMEDIATE", work)

    async def ping(self) -> None:
        """Raise DatabaseUnavailable unless a query round-trips."""

        async def select_one(conn: aiosqlite.Connection) -> None:
            await conn.execute("SELECT count(*) FROM schema_version")

        try:
            await asyncio.wait_for(self.read(select_one), timeout=2.0)
        except (sqlite3.Error, TimeoutError) as exc:
            raise DatabaseUnavailable() from exc
