"""The database schema as an ordered list of migrations, and the code that applies them.

``schema_version`` records every migration applied.  ``migrate`` runs the missing ones inside one
transaction that holds the write lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory
lock), so when several workers start at once the first migrates while the others wait and then
find nothing left to do.  The supervisor also migrates once before it spawns any worker.  The
statements are templates for both databases (``dialects.py``).  Never edit a released
migration: append a new one.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from .dialects import MIGRATION_LOCK, POSTGRESQL, SQLITE, Dialect

BUSY_TIMEOUT_SECONDS = 5.0

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: users, login sessions (token families) and the login-failure log.
    (
        # AUTOINCREMENT: a deleted user's id is never handed out again, so an old token's ``sub``
        # can never come to name somebody else.  ``username`` and ``password_hash`` are NULL for
        # the directory entries made by ``POST /user`` (they cannot log in).  ``email_key`` is
        # the lower-cased e-mail: addresses are unique case-insensitively.
        """
        CREATE TABLE users (
            id {id},
            username TEXT UNIQUE {nocase},
            name TEXT,
            email TEXT NOT NULL,
            email_key TEXT NOT NULL UNIQUE,
            password_hash TEXT,
            activated INTEGER NOT NULL DEFAULT 0 CHECK (activated IN (0, 1)),
            role TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
            confirmation_jti TEXT,
            created_at {real} NOT NULL
        )
        """,
        # One row per login: every access and refresh token carries its family id.
        # ``refresh_jti`` is the only refresh token of the family still valid; presenting an
        # older one is reuse (RFC 9700 section 4.14.2) and revokes the family.
        """
        CREATE TABLE token_families (
            id TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            refresh_jti TEXT NOT NULL,
            created_at {real} NOT NULL,
            expires_at {real} NOT NULL,
            revoked_at {real}
        )
        """,
        "CREATE INDEX token_families_user ON token_families (user_id)",
        "CREATE INDEX token_families_expiry ON token_families (expires_at)",
        """
        CREATE TABLE login_failures (
            key TEXT NOT NULL,
            at {real} NOT NULL
        )
        """,
        "CREATE INDEX login_failures_key_at ON login_failures (key, at)",
        "CREATE INDEX login_failures_at ON login_failures (at)",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class Schema:
    """A program's migrations and the table that records them (the products service has its
    own, so both may even share one PostgreSQL database)."""

    migrations: tuple[tuple[str, ...], ...]
    table: str = "schema_version"
    lock: int = MIGRATION_LOCK

    @property
    def version(self) -> int:
        return len(self.migrations)


BACKEND = Schema(MIGRATIONS)


class SchemaTooNew(Exception):
    """The database was migrated by a newer version of this code."""


def statements(dialect: Dialect, version: int, schema: Schema = BACKEND) -> list[str]:
    """Migration ``version`` (1-based) rendered for ``dialect``."""
    return [dialect.render(template) for template in schema.migrations[version - 1]]


def _too_new(where: str, current: int, schema: Schema) -> SchemaTooNew:
    return SchemaTooNew(
        f"{where}: schema version {current} is newer than this code knows "
        f"({schema.version}); upgrade the program or use another database"
    )


def connect(path: Path) -> sqlite3.Connection:
    """A stdlib connection with the pragmas every connection of ours uses.

    ``isolation_level=None``: we issue BEGIN/COMMIT ourselves, the sqlite3 module does not.
    """
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    # NORMAL is durable across application crashes in WAL mode; only power loss may drop the
    # last transactions.
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def migrate(target: Path | str, schema: Schema = BACKEND) -> int:
    """Bring the database at ``target`` (a SQLite file or a postgresql:// URL) to the schema's
    newest version; return the version it was at."""
    if isinstance(target, str):
        return asyncio.run(migrate_postgresql(target, schema))
    path = target
    path.parent.mkdir(parents=True, exist_ok=True)
    # The file holds password hashes: owner-only from the first byte.  SQLite gives the -wal
    # and -shm files the database's mode.  (O_CREAT without O_EXCL: racing creators are fine,
    # SQLite treats an empty file as a new database.)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    conn = connect(path)
    try:
        # WAL lets readers in every worker proceed while one writer commits.  The mode is
        # stored in the file, so setting it once here is enough for all connections.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            table = schema.table
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER NOT NULL)")
            row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {table}").fetchone()
            current = int(row[0])
            if current > schema.version:
                raise _too_new(str(path), current, schema)
            for version in range(current + 1, schema.version + 1):
                for statement in statements(SQLITE, version, schema):
                    conn.execute(statement)
                conn.execute(f"INSERT INTO {table} (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return current
    finally:
        conn.close()


async def migrate_postgresql(url: str, schema: Schema = BACKEND) -> int:
    from gateway.config import redact_url

    conn = await asyncpg.connect(url, timeout=BUSY_TIMEOUT_SECONDS)
    try:
        async with conn.transaction():
            # Held to the end of the transaction: concurrent migrators run one after another.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", schema.lock)
            for statement in POSTGRESQL.setup:
                await conn.execute(statement)
            table = schema.table
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER NOT NULL)")
            current = int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {table}"))
            if current > schema.version:
                raise _too_new(redact_url(url), current, schema)
            for version in range(current + 1, schema.version + 1):
                for statement in statements(POSTGRESQL, version, schema):
                    await conn.execute(statement)
                await conn.execute(f"INSERT INTO {table} (version) VALUES ($1)", version)
        return current
    finally:
        await conn.close()
