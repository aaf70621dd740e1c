"""The worker's connections to the shared database (SQLite or PostgreSQL) and its transactions.

Theory of operation: every worker keeps a small pool of connections; a connection is lent to
exactly one task at a time, so one task's transaction never sees another's statements.  Work is
passed in as a function of a ``Connection`` (``fetchone``/``fetchall``/``execute`` with ``?``
placeholders, whatever the database):

* ``read(work)`` runs it in one consistent snapshot (SQLite: a deferred transaction, WAL readers
  never wait for writers; PostgreSQL: REPEATABLE READ, READ ONLY);
* ``write(work)`` runs it as the only writer: SQLite's ``BEGIN IMMEDIATE`` takes the write lock
  up front; PostgreSQL takes one advisory lock (``dialects.WRITE_LOCK``) first.  A
  read-modify-write therefore cannot interleave with another worker's, and lock waits happen at
  the start under a timeout.  If the lock stays busy past the timeout the whole function is
  retried a few times with jitter, then the client gets a 503, never "database is locked".

``connect(target)`` picks the implementation: a ``Path`` is a SQLite file, a
``postgresql://`` URL (a ``str``) is a PostgreSQL database (asyncpg, no ORM: SQLAlchemy Core
costs several times more per simple query than the query itself).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite
import asyncpg

from . import migrations
from .dialects import POSTGRESQL, SQLITE, WRITE_LOCK, Dialect
from .errors import ServiceUnavailable

log = logging.getLogger("backend.db")

T = TypeVar("T")
POOL_SIZE = 4
BUSY_RETRIES = 3
PING_TIMEOUT = 2.0
CONNECT_TIMEOUT = 5.0

Params = Sequence[Any]


class Row(Protocol):
    """sqlite3.Row and asyncpg.Record alike: by column name or position."""

    def __getitem__(self, key: str | int) -> Any: ...


class IntegrityError(Exception):
    """A constraint refused the statement (unique, foreign key, check)."""


class Connection(Protocol):
    dialect: Dialect

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...


Work = Callable[[Connection], Awaitable[T]]


class _Queries:
    """What both connection kinds derive from their own ``fetchall``."""

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        raise NotImplementedError

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


class DatabaseUnavailable(ServiceUnavailable):
    def __init__(self, message: str = "The database is unavailable.") -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class Database(Protocol):
    dialect: Dialect

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def read(self, work: Work[T]) -> T: ...
    async def write(self, work: Work[T]) -> T: ...
    async def ping(self) -> None:
        """Raise DatabaseUnavailable unless a query round-trips."""
        ...


def connect(
    target: Path | str,
    *,
    pool_size: int = POOL_SIZE,
    migrate: bool = True,
    schema: migrations.Schema = migrations.BACKEND,
) -> Database:
    """The database at ``target`` (not opened yet), brought to ``schema`` on open.
    ``migrate=False`` for a database that belongs to another program (the products service
    reading the backend's sessions)."""
    if isinstance(target, Path):
        return SQLiteDatabase(target, pool_size=pool_size, migrate=migrate, schema=schema)
    return PostgresDatabase(target, pool_size=pool_size, migrate=migrate, schema=schema)


def _select_one(schema: migrations.Schema) -> Work[None]:
    async def select(conn: Connection) -> None:
        await conn.fetchone(f"SELECT count(*) FROM {schema.table}")

    return select


# --- SQLite ------------------------------------------------------------------------------------


def is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, including extended codes such as BUSY_SNAPSHOT."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(exc) or "busy" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SQLiteConnection(_Queries):
    dialect = SQLITE

    def __init__(self, raw: aiosqlite.Connection) -> None:
        self.raw = raw

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            async with self.raw.execute(sql, tuple(params)) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc

    async def execute(self, sql: str, params: Params = ()) -> int:
        try:
            cursor = await self.raw.execute(sql, tuple(params))
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc
        return int(cursor.rowcount)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self.raw.executemany(sql, [tuple(r) for r in rows])


class SQLiteDatabase:
    dialect = SQLITE

    def __init__(
        self,
        path: Path,
        *,
        pool_size: int = POOL_SIZE,
        migrate: bool = True,
        schema: migrations.Schema = migrations.BACKEND,
    ) -> None:
        self.path = path
        self.pool_size = pool_size
        self.migrate = migrate
        self.schema = schema
        self._idle: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._closed = True

    async def open(self) -> None:
        if self.migrate:
            await asyncio.to_thread(migrations.migrate, self.path, self.schema)
        self._closed = False
        for _ in range(self.pool_size):
            self._idle.put_nowait(await self._connect())

    async def close(self) -> None:
        self._closed = True
        # Connections lent out are closed when they come back (see ``_lend``).
        while not self._idle.empty():
            await self._discard(self._idle.get_nowait())

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
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
                        result = await work(SQLiteConnection(conn))
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
        try:
            await asyncio.wait_for(self.read(_select_one(self.schema)), timeout=PING_TIMEOUT)
        except (sqlite3.Error, TimeoutError) as exc:
            raise DatabaseUnavailable() from exc


# --- PostgreSQL --------------------------------------------------------------------------------

_ROWCOUNT = re.compile(r"(\d+)$")
# Failures that mean "the server is not there (any more)": a 503, never a 500.
UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)
# Failures that mean "another writer held the lock too long": retried like SQLITE_BUSY.
BUSY = (asyncpg.LockNotAvailableError, asyncpg.SerializationError, asyncpg.DeadlockDetectedError)


class _WorkFailed(Exception):
    """An OSError of the work itself (the outbox is full...), not of the connection: it must
    not turn into "the database is unreachable"."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


async def _guarded(work: Work[T], conn: Connection) -> T:
    try:
        return await work(conn)
    except OSError as exc:
        if isinstance(exc, ConnectionError):
            raise  # the connection broke under the query: unreachable after all
        raise _WorkFailed(exc) from exc


class PostgresConnection(_Queries):
    dialect = POSTGRESQL

    def __init__(self, raw: asyncpg.Connection) -> None:
        self.raw = raw

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            return list(await self.raw.fetch(POSTGRESQL.sql(sql), *params))
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc

    async def execute(self, sql: str, params: Params = ()) -> int:
        try:
            status = await self.raw.execute(POSTGRESQL.sql(sql), *params)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from exc
        match = _ROWCOUNT.search(status)  # "UPDATE 1", "INSERT 0 1", "DELETE 3"
        return int(match.group(1)) if match else 0

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self.raw.executemany(POSTGRESQL.sql(sql), [tuple(r) for r in rows])


class PostgresDatabase:
    dialect = POSTGRESQL

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = POOL_SIZE,
        migrate: bool = True,
        schema: migrations.Schema = migrations.BACKEND,
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.migrate = migrate
        self.schema = schema
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self.migrate:
            await asyncio.to_thread(migrations.migrate, self.url, self.schema)
        lock_ms = int(migrations.BUSY_TIMEOUT_SECONDS * 1000)
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            timeout=CONNECT_TIMEOUT,
            # lock_timeout is our busy_timeout: a writer waits this long for the write lock.
            server_settings={"lock_timeout": str(lock_ms), "application_name": "pygateway"},
        )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _transaction(self, write: bool, work: Work[T]) -> T:
        for attempt in range(BUSY_RETRIES + 1):
            pool = self._pool
            if pool is None:
                raise DatabaseUnavailable()
            try:
                async with pool.acquire(timeout=CONNECT_TIMEOUT) as raw:
                    if write:
                        async with raw.transaction(isolation="read_committed"):
                            await raw.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                            return await _guarded(work, PostgresConnection(raw))
                    async with raw.transaction(isolation="repeatable_read", readonly=True):
                        return await _guarded(work, PostgresConnection(raw))
            except _WorkFailed as failed:
                raise failed.error from failed.error.__cause__
            except BUSY:
                log.warning("database busy (attempt %d of %d)", attempt + 1, BUSY_RETRIES + 1)
                if attempt < BUSY_RETRIES:
                    await asyncio.sleep(random.uniform(0.02, 0.1) * 2**attempt)
            except UNREACHABLE as exc:
                log.warning("database unreachable: %s", exc)
                raise DatabaseUnavailable() from exc
        raise DatabaseUnavailable("The database is busy; try again.")

    async def read(self, work: Work[T]) -> T:
        return await self._transaction(False, work)

    async def write(self, work: Work[T]) -> T:
        return await self._transaction(True, work)

    async def ping(self) -> None:
        try:
            await asyncio.wait_for(self.read(_select_one(self.schema)), timeout=PING_TIMEOUT)
        except (asyncpg.PostgresError, TimeoutError) as exc:
            raise DatabaseUnavailable() from exc
