"""The database (migrations, concurrency, busy handling) and the JWT secret on disk."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
from support.postgres import PostgresServer

from backend import db as db_module
from backend import migrations
from backend.db import Connection, DatabaseUnavailable, SQLiteDatabase
from backend.dialects import POSTGRESQL, SQLITE, WRITE_LOCK
from backend.signing_key import ENV_VAR, SigningKeyError, load_or_create, load_signing_key


def _versions(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    conn.close()
    return [version for (version,) in rows]


def test_migrate_records_versions_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "var" / "backend.db"
    assert migrations.migrate(path) == 0
    assert migrations.migrate(path) == migrations.SCHEMA_VERSION
    assert _versions(path) == list(range(1, migrations.SCHEMA_VERSION + 1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_concurrent_migrations_apply_once(tmp_path: Path) -> None:
    path = tmp_path / "backend.db"
    with ThreadPoolExecutor(max_workers=8) as pool:
        before = sorted(pool.map(migrations.migrate, [path] * 8))
    assert before == [0] + [migrations.SCHEMA_VERSION] * 7
    assert _versions(path) == list(range(1, migrations.SCHEMA_VERSION + 1))


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "backend.db"
    migrations.migrate(path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?)", (migrations.SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(migrations.SchemaTooNew, match="newer than this code"):
        migrations.migrate(path)


@pytest.mark.anyio
async def test_busy_database_is_retried_then_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(migrations, "BUSY_TIMEOUT_SECONDS", 0.01)
    path = tmp_path / "backend.db"
    database = SQLiteDatabase(path, pool_size=1)
    await database.open()
    # Another "worker" holds the write lock.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    async def insert(conn: Connection) -> None:
        await conn.execute("INSERT INTO login_failures (key, at) VALUES ('k', 1)")

    try:
        with caplog.at_level(logging.WARNING, logger="backend.db"):
            with pytest.raises(DatabaseUnavailable, match="busy"):
                await database.write(insert)
        assert caplog.text.count("database busy") == db_module.BUSY_RETRIES + 1

        # The holder lets go as soon as the first busy attempt is reported: the retry wins.
        class ReleaseOnBusy(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if holder.in_transaction:
                    holder.execute("COMMIT")

        assert holder.in_transaction
        release = ReleaseOnBusy()
        db_module.log.addHandler(release)
        try:
            await database.write(insert)
        finally:
            db_module.log.removeHandler(release)
        # the pool's connection came back clean and is usable
        assert await database.read(_count_failures) == 1
    finally:
        holder.close()
        await database.close()
    with pytest.raises(DatabaseUnavailable):
        await database.read(_count_failures)


async def _count_failures(conn: Connection) -> int:
    row = await conn.fetchone("SELECT count(*) FROM login_failures")
    assert row is not None
    return int(row[0])


def test_signing_key_from_environment(tmp_path: Path) -> None:
    key = "x" * 40
    assert load_signing_key(tmp_path, {ENV_VAR: key}) == key.encode()
    with pytest.raises(SigningKeyError, match="at least 32"):
        load_signing_key(tmp_path, {ENV_VAR: "too short"})
    assert not (tmp_path / "jwt-secret").exists()


def test_signing_key_file_is_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "var" / "jwt-secret"
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = set(pool.map(load_or_create, [path] * 16))
    assert len(keys) == 1 and len(keys.pop()) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["jwt-secret"]  # no temporary files left
    assert load_signing_key(tmp_path / "var", {}) == path.read_bytes().strip()

    path.chmod(0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_or_create(path)
    path.chmod(0o600)
    path.write_text("short\n")
    with pytest.raises(SigningKeyError, match="shorter than"):
        load_or_create(path)


# --- PostgreSQL ----------------------------------------------------------------------------


def test_postgresql_migrations_apply_once_concurrently(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    with ThreadPoolExecutor(max_workers=6) as pool:
        before = sorted(pool.map(migrations.migrate, [url] * 6))
    assert before == [0] + [migrations.SCHEMA_VERSION] * 5

    async def versions() -> list[int]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT version FROM schema_version ORDER BY version")
            await conn.execute("INSERT INTO schema_version VALUES ($1)", len(rows) + 1)
            return [row[0] for row in rows]
        finally:
            await conn.close()

    assert asyncio.run(versions()) == list(range(1, migrations.SCHEMA_VERSION + 1))
    with pytest.raises(migrations.SchemaTooNew, match="newer than this code"):
        migrations.migrate(url)


@pytest.mark.anyio
async def test_postgresql_usernames_are_case_insensitive_and_ids_never_reused(
    postgres: PostgresServer,
) -> None:
    database = db_module.connect(postgres.new_database(), pool_size=1)
    await database.open()
    try:

        async def add(conn: Connection, name: str) -> int:
            row = await conn.fetchone(
                "INSERT INTO users (username, email, email_key, created_at)"
                " VALUES (?, ?, ?, ?) RETURNING id",
                (name, f"{name}@x.test", f"{name.lower()}@x.test", 1.5),
            )
            assert row is not None
            return int(row["id"])

        first = await database.write(lambda conn: add(conn, "Alice"))
        with pytest.raises(db_module.IntegrityError):
            await database.write(lambda conn: add(conn, "aLICE"))
        found = await database.read(
            lambda conn: conn.fetchone("SELECT id FROM users WHERE username = ?", ("ALICE",))
        )
        assert found is not None and found["id"] == first
        await database.write(lambda conn: conn.execute("DELETE FROM users WHERE id = ?", (first,)))
        assert await database.write(lambda conn: add(conn, "bob")) > first
    finally:
        await database.close()


@pytest.mark.anyio
async def test_postgresql_busy_write_lock_is_retried_then_503(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(migrations, "BUSY_TIMEOUT_SECONDS", 0.05)
    url = postgres.new_database()
    database = db_module.connect(url, pool_size=1)
    await database.open()
    holder = await asyncpg.connect(url)  # another "worker" in the middle of a write
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)

        async def insert(conn: Connection) -> int:
            return await conn.execute("INSERT INTO login_failures (key, at) VALUES ('k', 1)")

        with caplog.at_level(logging.WARNING, logger="backend.db"):
            with pytest.raises(DatabaseUnavailable, match="busy"):
                await database.write(insert)
        assert caplog.text.count("database busy") == db_module.BUSY_RETRIES + 1
        await transaction.commit()
        assert await database.write(insert) == 1
        assert await database.read(_count_failures) == 1
    finally:
        await holder.close()
        await database.close()
    with pytest.raises(DatabaseUnavailable):
        await database.read(_count_failures)


def test_dialects_number_placeholders_outside_quotes_and_render_migrations() -> None:
    sql = "SELECT '?', \"a?\" FROM t WHERE a = ? AND b IN (?, ?)"
    assert POSTGRESQL.sql(sql) == "SELECT '?', \"a?\" FROM t WHERE a = $1 AND b IN ($2, $3)"
    assert SQLITE.sql(sql) == sql
    sqlite_users = migrations.statements(SQLITE, 1)[0]
    # rendered for SQLite, the first migration is exactly what was released before PostgreSQL
    assert "id INTEGER PRIMARY KEY AUTOINCREMENT," in sqlite_users
    assert "username TEXT UNIQUE COLLATE NOCASE," in sqlite_users
    assert "created_at REAL NOT NULL" in sqlite_users
    postgres_users = migrations.statements(POSTGRESQL, 1)[0]
    assert "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY," in postgres_users
    assert "created_at DOUBLE PRECISION NOT NULL" in postgres_users
