"""``run_backend.py``: run the supervised workers, or create an admin.

    run_backend.py [--config PATH]
    run_backend.py create-admin --username U --email E --password-stdin [--config PATH]
    run_backend.py backup --to FILE [--config PATH]
    run_backend.py restore --from FILE [--config PATH]

Library code raises typed errors; only this module turns them into messages and exit codes
(0 ok, 1 failed, 2 usage).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from gateway.config import ConfigError, Settings, load_settings

from . import backup, users
from . import db as database
from .errors import ValidationFailed
from .migrations import SchemaTooNew
from .passwords import hash_password
from .schemas import RegisterRequest, parse
from .supervisor import SupervisorError
from .supervisor import run as run_supervisor


def _parser() -> argparse.ArgumentParser:
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="config file (default: config.toml in the current directory)",
    )
    parser = argparse.ArgumentParser(
        prog="run_backend.py",
        description="Start [backend].workers worker processes and supervise them.",
        parents=[config],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    admin = commands.add_parser(
        "create-admin",
        parents=[config],
        help="create an admin user, or promote an existing one",
        description="Create a confirmed admin user, or promote the user with that username "
        "(its e-mail and password are replaced). The password is read from standard input.",
    )
    admin.add_argument("--username", required=True)
    admin.add_argument("--email", required=True)
    admin.add_argument(
        "--password-stdin",
        action="store_true",
        required=True,
        help="read the password from standard input (never from the command line)",
    )
    backup_command = commands.add_parser(
        "backup",
        parents=[config],
        help="write a consistent backup of the database, also while workers write",
        description="SQLite: the online backup API (the backup is a SQLite file). "
        "PostgreSQL: pg_dump --format=custom.",
    )
    backup_command.add_argument("--to", type=Path, required=True, metavar="FILE")
    restore_command = commands.add_parser(
        "restore",
        parents=[config],
        help="restore a backup into a fresh (empty) database",
        description="Restores a file written by 'backup' into [backend] database, which must be "
        "new: a SQLite file that does not exist yet, or a PostgreSQL database without tables.",
    )
    restore_command.add_argument("--from", dest="source", type=Path, required=True, metavar="FILE")
    return parser


async def create_admin(settings: Settings, *, username: str, email: str, password: str) -> str:
    """Create or promote the admin; return a line saying which."""
    request = parse(RegisterRequest, {"username": username, "email": email, "password": password})
    password_hash = await hash_password(request.password)
    db = database.connect(settings.backend.database, pool_size=1)
    await db.open()
    try:
        user, created = await db.write(
            lambda conn: users.make_admin(
                conn, username=request.username, email=request.email, password_hash=password_hash
            )
        )
    finally:
        await db.close()
    verb = "created" if created else "promoted"
    return f"backend: {verb} admin {user.username!r} <{user.email}> (id {user.id})"


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("backend: %(message)s"))
    root = logging.getLogger("backend")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config_path: Path = getattr(args, "config", Path("config.toml"))
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    if args.command in ("backup", "restore"):
        try:
            if args.command == "backup":
                print(f"backend: {backup.backup(settings.backend.database, args.to)}")
            else:
                print(f"backend: {backup.restore(settings.backend.database, args.source)}")
        except (backup.BackupError, SchemaTooNew) as exc:
            print(f"backend: {args.command}: {exc}", file=sys.stderr)
            return 1
        except (OSError, sqlite3.Error, asyncpg.PostgresError) as exc:
            print(f"backend: {args.command}: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "create-admin":
        password = sys.stdin.readline().rstrip("\r\n")
        try:
            print(
                asyncio.run(
                    create_admin(
                        settings, username=args.username, email=args.email, password=password
                    )
                )
            )
        except ValidationFailed as exc:
            for field, messages in exc.errors.items():
                print(f"backend: create-admin: {field}: {' '.join(messages)}", file=sys.stderr)
            return 1
        except (SchemaTooNew, sqlite3.Error, OSError, asyncpg.PostgresError) as exc:
            print(f"backend: create-admin: {exc}", file=sys.stderr)
            return 1
        return 0
    _configure_logging()
    try:
        return run_supervisor(settings)
    except SupervisorError as exc:
        print(f"backend: {exc}", file=sys.stderr)
        return 1
