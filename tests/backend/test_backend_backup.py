"""``run_backend.py backup`` and ``restore``, on SQLite and PostgreSQL: a backup taken while
users are being registered restores into a fresh database with every user committed before it
started, and nothing half-written; a restore never overwrites a database that holds data."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from support.databases import run_sql
from support.postgres import PostgresServer

from backend.app import create_app
from backend.backup import PGDUMP_MAGIC, SQLITE_MAGIC
from gateway.config import Settings, parse_settings

if TYPE_CHECKING:
    from conftest import Api

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.anyio


def run_backend(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_backend.py"), *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "BACKEND_JWT_SECRET"},
    )


def config_file(directory: Path, database: str | Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.toml"
    path.write_text(f'[backend]\ndatabase = "{database}"\n')
    return path


def fresh_database(settings: Settings, directory: Path, request: pytest.FixtureRequest) -> str:
    if isinstance(settings.backend.database, Path):
        return str(directory / "restored" / "backend.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


async def test_backup_under_concurrent_writes_restores_every_committed_user(
    api: Api, client: httpx.AsyncClient, settings: Settings, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    config = config_file(tmp_path / "live", settings.backend.database)
    committed: list[str] = []  # in commit order
    stop = asyncio.Event()
    enough = asyncio.Event()

    async def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            name = f"w{n}x{i}"
            body = {"username": name, "email": f"{name}@example.com", "password": "p" * 10}
            response = await client.post("/register", json=body)
            assert response.status_code == 201, response.text
            committed.append(name)
            if len(committed) >= 8:
                enough.set()
            i += 1

    writers = [asyncio.create_task(writer(n)) for n in range(3)]
    await enough.wait()
    before = list(committed)  # every one of these had committed when the backup started
    backup_file = tmp_path / "backups" / "backend.backup"
    result = await asyncio.to_thread(run_backend, config, "backup", "--to", str(backup_file))
    during = len(committed)
    stop.set()
    await asyncio.gather(*writers)
    assert result.returncode == 0, result.stderr
    assert f"written to {backup_file}" in result.stdout
    assert stat.S_IMODE(backup_file.stat().st_mode) == 0o600
    assert not list(backup_file.parent.glob(".*partial"))  # written aside, renamed into place
    magic = SQLITE_MAGIC if isinstance(settings.backend.database, Path) else PGDUMP_MAGIC
    assert backup_file.read_bytes().startswith(magic)
    assert len(committed) > len(before)  # the writers really wrote while the backup ran

    # restore into a fresh database: every user committed before the backup is there
    fresh = fresh_database(settings, tmp_path, request)
    target = config_file(tmp_path / "fresh", fresh)
    result = run_backend(target, "restore", "--from", str(backup_file))
    assert result.returncode == 0, result.stderr
    restored_settings = parse_settings({"backend": {"database": fresh}}, target)
    rows = await run_sql(restored_settings, "SELECT username, email, password_hash FROM users")
    restored = {row[0] for row in rows}
    assert set(before) <= restored <= set(committed)
    assert len(restored) <= during
    assert all(row[1] == f"{row[0]}@example.com" and row[2] for row in rows)  # whole rows
    assert f"({len(restored)} users)" in result.stdout

    # the restored database serves: the password check passes (403: not confirmed yet, which
    # needs the row, its hash and the schema)
    restored_app = create_app(restored_settings, environ={})
    async with restored_app.router.lifespan_context(restored_app):
        transport = httpx.ASGITransport(app=restored_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as restored_client:
            login = {"username": before[0], "password": "p" * 10}
            response = await restored_client.post("/login", json=login)
            assert response.status_code == 403, response.text
            login["password"] = "wrong password"
            assert (await restored_client.post("/login", json=login)).status_code == 401

    # never over a database that holds data
    result = run_backend(target, "restore", "--from", str(backup_file))
    assert result.returncode == 1
    assert "fresh database" in result.stderr


async def test_restore_refuses_the_other_kind_of_backup(
    api: Api, settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    await api.register()
    config = config_file(tmp_path / "live", settings.backend.database)
    fresh = config_file(tmp_path / "fresh", fresh_database(settings, tmp_path, request))
    other = tmp_path / "other.backup"
    if isinstance(settings.backend.database, Path):
        other.write_bytes(PGDUMP_MAGIC + b"\x01\x0e" + b"\x00" * 64)
        expected = "is a PostgreSQL dump"
    else:
        other.write_bytes(SQLITE_MAGIC + b"\x00" * 64)
        expected = "is a SQLite backup"
    result = run_backend(fresh, "restore", "--from", str(other))
    assert result.returncode == 1 and expected in result.stderr, result.stderr
    garbage = tmp_path / "garbage.backup"
    garbage.write_text("hello")
    result = run_backend(fresh, "restore", "--from", str(garbage))
    assert result.returncode == 1 and "not a backup" in result.stderr
    result = run_backend(config, "restore", "--from", str(tmp_path / "missing"))
    assert result.returncode == 1 and "cannot read" in result.stderr
