"""Backups of the backend's database: ``run_backend.py backup --to FILE`` and
``restore --from FILE``.

* SQLite: the online backup API copies the database in one read transaction, so the copy is one
  consistent state even while workers write (WAL readers never block writers).  The backup is
  itself a SQLite file.
* PostgreSQL: ``pg_dump --format=custom`` (one snapshot of one transaction, by design) and
  ``pg_restore``.  The password travels in ``PGPASSWORD``, never on a command line.

A backup is written aside and renamed into place, mode 0600 (it holds password hashes), so a
half-written file never carries the final name.  A restore goes into a fresh database only (a
SQLite file that does not exist yet or is empty; a PostgreSQL database without our tables), is
checked first (the format must match the database kind), and is migrated afterwards, so an older
backup comes up at the current schema.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from gateway.config import redact_url

from . import migrations

SQLITE_MAGIC = b"SQLite format 3\x00"
PGDUMP_MAGIC = b"PGDMP"
TOOL_TIMEOUT = 3600.0


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why and what to do."""


def backup(database: Path | str, to: Path) -> str:
    """Write a consistent backup of ``database`` to ``to``; return a line saying what was done."""
    to = to.resolve()
    with _aside(to) as partial:
        if isinstance(database, Path):
            if not database.exists():
                raise BackupError(f"{database}: no such database file")
            source = sqlite3.connect(database, timeout=migrations.BUSY_TIMEOUT_SECONDS)
            target = sqlite3.connect(partial)
            try:
                source.backup(target)  # all pages in one step: one snapshot
                # One self-contained file (the copied header says WAL otherwise).
                target.execute("PRAGMA journal_mode = DELETE")
            except sqlite3.Error as exc:
                raise BackupError(f"{database}: backup failed: {exc}") from None
            finally:
                target.close()
                source.close()
        else:
            _run_tool(
                "pg_dump",
                ["--format=custom", "--no-owner", "--no-privileges", f"--file={partial}"],
                database,
            )
    users = count_users(to if isinstance(database, Path) else database)
    return f"backup of {_show(database)} written to {to} ({to.stat().st_size} bytes, {users} users)"


def restore(database: Path | str, source: Path) -> str:
    """Restore ``source`` into the fresh ``database``; return a line saying what was done."""
    source = source.resolve()
    try:
        with source.open("rb") as f:
            magic = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise BackupError(f"{source}: cannot read: {exc.strerror}") from None
    if isinstance(database, Path):
        if not magic.startswith(SQLITE_MAGIC):
            kind = "a PostgreSQL dump" if magic.startswith(PGDUMP_MAGIC) else "not a backup"
            raise BackupError(
                f"{source} is {kind}; [backend] database is the SQLite file {database}"
            )
        if database.exists() and database.stat().st_size > 0:
            raise BackupError(
                f"{database} already exists; restore into a fresh database: stop the backend "
                "and move the file away, or point [backend] database at a new path"
            )
        _restore_sqlite(source, database)
    else:
        if not magic.startswith(PGDUMP_MAGIC):
            kind = "a SQLite backup" if magic.startswith(SQLITE_MAGIC) else "not a backup"
            raise BackupError(f"{source} is {kind}; [backend] database is PostgreSQL")
        if asyncio.run(_has_tables(database)):
            raise BackupError(
                f"{redact_url(database)} already holds the backend's tables; restore into a "
                "fresh database (e.g. dropdb and createdb it first)"
            )
        _run_tool(
            "pg_restore",
            [
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--single-transaction",
                str(source),
            ],
            database,
        )
    migrations.migrate(database)  # an older backup comes up at today's schema
    users = count_users(database)
    return f"restored {source} into {_show(database)} ({users} users)"


def _restore_sqlite(source: Path, database: Path) -> None:
    backup_db = sqlite3.connect(source)
    try:
        if backup_db.execute("PRAGMA quick_check").fetchone() != ("ok",):
            raise BackupError(f"{source}: the backup file is damaged (PRAGMA quick_check)")
        database.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only from the first byte, like migrations.migrate.
        os.close(os.open(database, os.O_CREAT | os.O_WRONLY, 0o600))
        target = sqlite3.connect(database)
        try:
            backup_db.backup(target)
        finally:
            target.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{source}: not a usable SQLite backup: {exc}") from None
    finally:
        backup_db.close()


def count_users(database: Path | str) -> int:
    if isinstance(database, Path):
        conn = sqlite3.connect(database)
        try:
            return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])
        finally:
            conn.close()

    async def count() -> int:
        conn = await asyncpg.connect(database)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM users"))
        finally:
            await conn.close()

    return asyncio.run(count())


async def _has_tables(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_name IN ('schema_version', 'users')"
        )
        return bool(found)
    finally:
        await conn.close()


@contextmanager
def _aside(final: Path) -> Iterator[Path]:
    """A private temporary path next to ``final``, renamed to it if the body succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
    os.close(os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
    try:
        yield partial
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)


def pg_tool(name: str) -> str:
    """The newest installed ``pg_dump``/``pg_restore`` (Debian keeps them per version)."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if versions:
        return str(versions[-1])
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    return found


def _run_tool(name: str, args: list[str], url: str) -> None:
    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password is not None:
        env["PGPASSWORD"] = parts.password
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    without_password = parts._replace(netloc=f"{user}@{netloc[2]}" if user else netloc[2])
    command = [pg_tool(name), *args, f"--dbname={without_password.geturl()}"]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise BackupError(f"{name} failed: {result.stderr.strip() or result.stdout.strip()}")


def _show(database: Path | str) -> str:
    return str(database) if isinstance(database, Path) else redact_url(database)
