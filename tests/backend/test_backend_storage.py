"""The database (migrations, concurrency, busy handling) and the JWT secret on disk."""

from __future__ import annotations

import logging
import sqlite3
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiosqlite
import pytest

from backend import db as db_module
from backend import migrations
from backend.db import Database, DatabaseUnavailable
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
    database = Database(path, pool_size=1)
    await database.open()
    # Another "worker" holds the write lock.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    async def insert(conn: aiosqlite.Connection) -> None:
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


async def _count_failures(conn: aiosqlite.Connection) -> int:
    async with conn.execute("SELECT count(*) FROM login_failures") as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def test_signing_key_from_environment(tmp_path: Path) -> None:
    database = tmp_path / "backend.db"
    key = "x" * 40
    assert load_signing_key(database, {ENV_VAR: key}) == key.encode()
    with pytest.raises(SigningKeyError, match="at least 32"):
        load_signing_key(database, {ENV_VAR: "too short"})
    assert not (tmp_path / "jwt-secret").exists()


def test_signing_key_file_is_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "var" / "jwt-secret"
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = set(pool.map(load_or_create, [path] * 16))
    assert len(keys) == 1 and len(keys.pop()) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["jwt-secret"]  # no temporary files left
    assert load_signing_key(tmp_path / "var" / "backend.db", {}) == path.read_bytes().strip()

    path.chmod(0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_or_create(path)
    path.chmod(0o600)
    path.write_text("short\n")
    with pytest.raises(SigningKeyError, match="shorter than"):
        load_or_create(path)
