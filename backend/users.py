"""The users table: every read and write of user rows goes through these functions.

One table holds two kinds of rows:

* accounts, made by ``POST /register`` or ``create-admin``: a username, a password hash, an
  e-mail that must be confirmed before the first login;
* directory entries, made by an admin with ``POST /user`` (the original FastAPI service's
  ``{name, email}`` records): a name and an e-mail, no username and no password hash, so they
  can never log in.  They share the e-mail uniqueness rule with accounts: an address belongs to
  one row, and registering an account with an address already in the directory is refused as
  a duplicate (ask an admin to delete the entry first).

Each function takes an open connection, so callers decide the transaction around it
(``Database.read`` / ``Database.write``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from email_validator import EmailNotValidError, validate_email

from .db import Connection, IntegrityError, Row
from .errors import ValidationFailed

DUPLICATE_USERNAME = "A user with that username already exists."
DUPLICATE_EMAIL = "A user with that email already exists."


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str | None
    name: str | None
    email: str
    activated: bool
    role: Role
    password_hash: str | None
    confirmation_jti: str | None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def public(self) -> dict[str, Any]:
        """The representation the API returns: never the hash or the confirmation token id."""
        return {
            "id": self.id,
            "username": self.username,
            "name": self.name,
            "email": self.email,
            "activated": self.activated,
            "role": self.role.value,
        }


class DuplicateUser(ValidationFailed):
    def __init__(self, field: str, message: str) -> None:
        super().__init__({field: [message]}, message=message)


def email_key(email: str) -> str:
    return email.lower()


def _user(row: Row) -> User:
    return User(
        id=row["id"],
        username=row["username"],
        name=row["name"],
        email=row["email"],
        activated=bool(row["activated"]),
        role=Role(row["role"]),
        password_hash=row["password_hash"],
        confirmation_jti=row["confirmation_jti"],
    )


_COLUMNS = "id, username, name, email, activated, role, password_hash, confirmation_jti"


async def _one(conn: Connection, sql: str, params: tuple[Any, ...]) -> User | None:
    row = await conn.fetchone(sql, params)
    return None if row is None else _user(row)


async def get(conn: Connection, user_id: int) -> User | None:
    return await _one(conn, f"SELECT {_COLUMNS} FROM users WHERE id = ?", (user_id,))


async def find_for_login(conn: Connection, login: str) -> User | None:
    """The account named by ``login``: an e-mail if it has an '@' (usernames cannot), else a
    username; both compared case-insensitively."""
    if "@" in login:
        try:
            address = validate_email(login, check_deliverability=False).normalized
        except EmailNotValidError:
            return None  # no account has an invalid address
        sql = f"SELECT {_COLUMNS} FROM users WHERE email_key = ?"
        return await _one(conn, sql, (email_key(address),))
    return await _one(conn, f"SELECT {_COLUMNS} FROM users WHERE username = ?", (login,))


async def list_page(conn: Connection, *, limit: int, offset: int) -> list[User]:
    sql = f"SELECT {_COLUMNS} FROM users ORDER BY id LIMIT ? OFFSET ?"
    return [_user(row) for row in await conn.fetchall(sql, (limit, offset))]


async def _check_unique(conn: Connection, username: str | None, email: str) -> None:
    if username is not None:
        if await conn.fetchone("SELECT 1 FROM users WHERE username = ?", (username,)):
            raise DuplicateUser("username", DUPLICATE_USERNAME)
    if await conn.fetchone("SELECT 1 FROM users WHERE email_key = ?", (email_key(email),)):
        raise DuplicateUser("email", DUPLICATE_EMAIL)


async def _insert(conn: Connection, values: dict[str, Any]) -> User:
    values = {**values, "email_key": email_key(values["email"]), "created_at": time.time()}
    columns = ", ".join(values)
    placeholders = ", ".join("?" for _ in values)
    try:
        row = await conn.fetchone(
            f"INSERT INTO users ({columns}) VALUES ({placeholders}) RETURNING {_COLUMNS}",
            tuple(values.values()),
        )
    except IntegrityError as exc:
        # Only reachable if the caller skipped _check_unique; keep the answer a 400 anyway.
        if "username" in str(exc):
            raise DuplicateUser("username", DUPLICATE_USERNAME) from exc
        raise DuplicateUser("email", DUPLICATE_EMAIL) from exc
    assert row is not None
    return _user(row)


async def create_account(
    conn: Connection,
    *,
    username: str,
    email: str,
    password_hash: str,
    role: Role = Role.USER,
    activated: bool = False,
) -> User:
    """Insert an account; raise DuplicateUser if the username or e-mail is taken."""
    await _check_unique(conn, username, email)
    return await _insert(
        conn,
        {
            "username": username,
            "email": email,
            "password_hash": password_hash,
            "role": role.value,
            "activated": int(activated),
        },
    )


async def create_directory_entry(conn: Connection, *, name: str, email: str) -> User:
    """Insert a name-only user (see the module docstring)."""
    await _check_unique(conn, None, email)
    return await _insert(conn, {"name": name, "email": email})


async def set_confirmation_jti(conn: Connection, user_id: int, jti: str) -> None:
    await conn.execute("UPDATE users SET confirmation_jti = ? WHERE id = ?", (jti, user_id))


async def confirm(conn: Connection, user_id: int, jti: str) -> bool:
    """Activate the account if ``jti`` is its outstanding confirmation token; single use."""
    changed = await conn.execute(
        "UPDATE users SET activated = 1, confirmation_jti = NULL"
        " WHERE id = ? AND confirmation_jti = ?",
        (user_id, jti),
    )
    return changed == 1


async def set_password_hash(conn: Connection, user_id: int, password_hash: str) -> None:
    await conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))


async def delete(conn: Connection, user_id: int) -> bool:
    """Delete the user; its login sessions go with it (ON DELETE CASCADE)."""
    return await conn.execute("DELETE FROM users WHERE id = ?", (user_id,)) == 1


async def make_admin(
    conn: Connection, *, username: str, email: str, password_hash: str
) -> tuple[User, bool]:
    """Create a confirmed admin, or promote the account with that username; (user, created)."""
    existing = await _one(conn, f"SELECT {_COLUMNS} FROM users WHERE username = ?", (username,))
    if existing is None:
        user = await create_account(
            conn,
            username=username,
            email=email,
            password_hash=password_hash,
            role=Role.ADMIN,
            activated=True,
        )
        return user, True
    if email_key(existing.email) != email_key(email):
        await _check_unique(conn, None, email)
    await conn.execute(
        "UPDATE users SET role = 'admin', activated = 1, confirmation_jti = NULL,"
        " email = ?, email_key = ?, password_hash = ? WHERE id = ?",
        (email, email_key(email), password_hash, existing.id),
    )
    promoted = await get(conn, existing.id)
    assert promoted is not None
    return promoted, False
