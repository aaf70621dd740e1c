"""Reaching the backend's database from a test, whichever database it is."""

from __future__ import annotations

from typing import Any

from backend import db
from gateway.config import Settings


async def run_sql(settings: Settings, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement on the backend's database, whichever it is, behind the app's back."""
    database = db.connect(settings.backend.database, pool_size=1, migrate=False)
    await database.open()
    try:
        return await database.write(lambda conn: conn.fetchall(sql, params))
    finally:
        await database.close()
