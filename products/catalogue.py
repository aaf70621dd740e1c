"""The products table: its migrations and every query on it (``?`` placeholders, run by
``backend.db`` on SQLite or PostgreSQL alike)."""

from __future__ import annotations

import time
from typing import Any

from backend.db import Connection, Row
from backend.dialects import MIGRATION_LOCK
from backend.migrations import Schema

from .schemas import ProductOut, format_price, parse_price

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # Prices are integer cents: exact, and the same on both databases.
        """
        CREATE TABLE products (
            id {id},
            name TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            price_cents {bigint} NOT NULL CHECK (price_cents >= 0),
            stock INTEGER NOT NULL CHECK (stock >= 0),
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL
        )
        """,
    ),
)
# Its own version table and lock: it may share a PostgreSQL database with the backend.
SCHEMA = Schema(MIGRATIONS, table="products_schema_version", lock=MIGRATION_LOCK + 1)

_COLUMNS = "id, name, description, price_cents, stock"


def _product(row: Row) -> ProductOut:
    return ProductOut(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        price=format_price(row["price_cents"]),
        stock=row["stock"],
    )


async def list_page(conn: Connection, *, limit: int, offset: int) -> list[ProductOut]:
    sql = f"SELECT {_COLUMNS} FROM products ORDER BY id LIMIT ? OFFSET ?"
    return [_product(row) for row in await conn.fetchall(sql, (limit, offset))]


async def get(conn: Connection, product_id: int) -> ProductOut | None:
    row = await conn.fetchone(f"SELECT {_COLUMNS} FROM products WHERE id = ?", (product_id,))
    return None if row is None else _product(row)


async def create(
    conn: Connection, *, name: str, description: str, price: str, stock: int
) -> ProductOut:
    now = time.time()
    row = await conn.fetchone(
        "INSERT INTO products (name, description, price_cents, stock, created_at, updated_at)"
        f" VALUES (?, ?, ?, ?, ?, ?) RETURNING {_COLUMNS}",
        (name, description, parse_price(price), stock, now, now),
    )
    assert row is not None
    return _product(row)


async def update(conn: Connection, product_id: int, changes: dict[str, Any]) -> ProductOut | None:
    """Apply the given fields (name, description, price, stock); None if there is no such id."""
    columns = {
        "price_cents" if key == "price" else key: parse_price(value) if key == "price" else value
        for key, value in changes.items()
    }
    columns["updated_at"] = time.time()
    assignments = ", ".join(f"{column} = ?" for column in columns)
    row = await conn.fetchone(
        f"UPDATE products SET {assignments} WHERE id = ? RETURNING {_COLUMNS}",
        (*columns.values(), product_id),
    )
    return None if row is None else _product(row)


async def delete(conn: Connection, product_id: int) -> bool:
    return await conn.execute("DELETE FROM products WHERE id = ?", (product_id,)) == 1
