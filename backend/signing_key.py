"""The JWT signing secret: from ``BACKEND_JWT_SECRET``, or generated once and kept on disk.

There is deliberately no built-in default.  Without the environment variable, a random secret
is written to ``jwt-secret`` in ``[backend]``'s state directory (next to the SQLite file, or
``var/`` with PostgreSQL), readable by the owner only, and every worker
reads the same file.  Creation is atomic even when several processes race: each writes its own
temporary file and hard-links it into place; ``link`` fails if the name exists, so exactly one
secret wins and the losers read it back.  A reader therefore never sees a half-written file.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "BACKEND_JWT_SECRET"
FILE_NAME = "jwt-secret"
MIN_BYTES = 32  # RFC 7518 section 3.2: an HS256 key must be at least 256 bits


class SigningKeyError(Exception):
    """The secret is missing, too short or exposed; the message says how to fix it."""


def key_file(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def load_signing_key(state_dir: Path, environ: Mapping[str, str] | None = None) -> bytes:
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_VAR)
    if value is not None:
        key = value.strip().encode()
        if len(key) < MIN_BYTES:
            raise SigningKeyError(
                f"{ENV_VAR} is {len(key)} bytes; use at least {MIN_BYTES} random bytes, "
                'e.g. python3 -c "import secrets; print(secrets.token_urlsafe(48))"'
            )
        return key
    return load_or_create(key_file(state_dir))


def load_or_create(path: Path) -> bytes:
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        temporary.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> bytes:
    with path.open("rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        key = f.read().strip()
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(
            f"{path}: the JWT secret is readable by other users (mode {stat.filemode(mode)}); "
            f"run: chmod 600 {path}"
        )
    if len(key) < MIN_BYTES:
        raise SigningKeyError(
            f"{path}: the JWT secret is shorter than {MIN_BYTES} bytes; delete the file "
            "to have a new one generated (this logs everybody out)"
        )
    return key
