"""htpasswd files for ``basic_auth``: parsing, and password checks that cost the same whether
or not the user exists.  Pure apart from ``read_htpasswd`` reading the file.

Accepted lines are ``user:hash`` with a bcrypt hash (``$2y$``/``$2b$``/``$2a$``, what
``htpasswd -B`` writes) or an Argon2id PHC string (``$argon2id$...``); blank lines and ``#``
comments are skipped.  The weaker formats htpasswd can also write (MD5 ``$apr1$``, SHA1,
crypt, plain text) are refused with the line number: a gateway that quietly accepted them
would invite them.
"""

from __future__ import annotations

from pathlib import Path

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

BCRYPT_PREFIXES = (b"$2y$", b"$2b$", b"$2a$")
ARGON2_PREFIX = b"$argon2id$"
# bcrypt only reads the first 72 bytes of a password; htpasswd -B truncates the same way (and
# bcrypt >= 5 refuses longer input rather than truncating).
BCRYPT_MAX_PASSWORD = 72
_argon2 = PasswordHasher()


class HtpasswdError(Exception):
    """The file cannot be used; the message says why (and which line)."""


def parse_htpasswd(text: str) -> dict[str, bytes]:
    """``{user: hash}`` from the file's text; HtpasswdError names the first bad line."""
    users: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, hashed = line.partition(":")
        if not colon or not user:
            raise HtpasswdError(f"line {number}: not a user:hash line")
        secret = hashed.encode("ascii", "replace")
        if not (secret.startswith(BCRYPT_PREFIXES) or secret.startswith(ARGON2_PREFIX)):
            raise HtpasswdError(
                f"line {number} (user {user!r}): unsupported hash; use bcrypt "
                "(htpasswd -B: $2y$/$2b$) or $argon2id$"
            )
        if secret.startswith(BCRYPT_PREFIXES) and len(secret) != 60:
            raise HtpasswdError(f"line {number} (user {user!r}): malformed bcrypt hash")
        users[user] = secret
    return users


def read_htpasswd(path: Path) -> dict[str, bytes]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HtpasswdError("no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HtpasswdError(f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_htpasswd(text)


def check_password(hashed: bytes, password: bytes) -> bool:
    """Whether ``password`` matches ``hashed`` (slow on purpose: run it off the event loop)."""
    if hashed.startswith(ARGON2_PREFIX):
        try:
            return _argon2.verify(hashed, password)
        except (VerificationError, InvalidHashError):
            return False
    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], hashed)
    except ValueError:
        return False


def check_user(users: dict[str, bytes], user: str, password: bytes, decoy: bytes) -> bool:
    """Whether ``user`` exists with ``password``.  An unknown user's password is checked
    against ``decoy`` (a real hash of the file) and the answer discarded, so timing does not
    tell which user names exist."""
    hashed = users.get(user)
    if hashed is None:
        check_password(decoy, password)
        return False
    return check_password(hashed, password)


def parse_basic_credentials(authorization: bytes | None) -> tuple[str, bytes] | None:
    """``(user, password)`` from an ``Authorization: Basic`` value (RFC 7617: base64 of
    ``user:password``, UTF-8), or None when it is missing or malformed."""
    import base64
    import binascii

    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None
