"""htpasswd parsing, password checks (bcrypt $2y$/$2b$, $argon2id$) and Basic credentials."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import bcrypt
import pytest
from argon2 import PasswordHasher

from gateway.middleware.htpasswd import (
    HtpasswdError,
    check_password,
    check_user,
    parse_basic_credentials,
    parse_htpasswd,
    read_htpasswd,
)


def bcrypt_2y(password: bytes, rounds: int = 4) -> str:
    """What ``htpasswd -B`` writes: a bcrypt hash with the $2y$ prefix."""
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds)).decode().replace("$2b$", "$2y$", 1)


ARGON = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def test_parse_skips_comments_and_blank_lines() -> None:
    text = f"# users\n\nalice:{bcrypt_2y(b'a')}\nbob:{ARGON.hash('b')}\n"
    users = parse_htpasswd(text)
    assert set(users) == {"alice", "bob"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("alice", "line 1: not a user:hash line"),
        (":$2y$05$abc", "line 1: not a user:hash line"),
        ("alice:$apr1$abc$def", "unsupported hash"),
        ("alice:{SHA}abc=", "unsupported hash"),
        ("alice:plaintext", "unsupported hash"),
        ("alice:$2y$05$tooshort", "malformed bcrypt hash"),
    ],
)
def test_parse_refuses_bad_lines(line: str, message: str) -> None:
    with pytest.raises(HtpasswdError, match=message.replace("$", r"\$")):
        parse_htpasswd(line)


def test_read_missing_or_unreadable(tmp_path: Path) -> None:
    with pytest.raises(HtpasswdError, match="no such file"):
        read_htpasswd(tmp_path / "nope")
    with pytest.raises(HtpasswdError, match="cannot read"):
        read_htpasswd(tmp_path)  # a directory


@pytest.mark.parametrize("password", [b"secret", "pässwörd-日本".encode()])
def test_bcrypt_2y_and_2b_and_argon2id(password: bytes) -> None:
    for hashed in (
        bcrypt_2y(password).encode(),
        bcrypt.hashpw(password, bcrypt.gensalt(4)),
        ARGON.hash(password).encode(),
    ):
        assert check_password(hashed, password)
        assert not check_password(hashed, password + b"x")


def test_long_password_checks_its_first_72_bytes_like_htpasswd() -> None:
    password = b"p" * 100
    hashed = bcrypt.hashpw(password[:72], bcrypt.gensalt(4))
    assert check_password(hashed, password)


def test_unknown_user_costs_a_real_check() -> None:
    slow = bcrypt_2y(b"right", rounds=10).encode()
    users = {"alice": slow}
    started = time.perf_counter()
    assert not check_user(users, "alice", b"wrong", slow)
    wrong = time.perf_counter() - started
    started = time.perf_counter()
    assert not check_user(users, "mallory", b"right", slow)
    unknown = time.perf_counter() - started
    assert unknown > wrong / 3  # same work (timing on a shared machine: generous)
    assert check_user(users, "alice", b"right", slow)


def basic(raw: bytes) -> bytes:
    return b"Basic " + base64.b64encode(raw)


def test_basic_credentials() -> None:
    assert parse_basic_credentials(basic(b"alice:s3cret")) == ("alice", b"s3cret")
    assert parse_basic_credentials(basic(b"alice:with:colon")) == ("alice", b"with:colon")
    utf8 = "jürgen:pässwörd".encode()
    assert parse_basic_credentials(basic(utf8)) == ("jürgen", "pässwörd".encode())
    assert parse_basic_credentials(b"bAsIc " + base64.b64encode(b"a:b")) == ("a", b"b")
    for bad in (None, b"Bearer abc", b"Basic !!!", basic(b"no-colon"), basic(b"\xff:x")):
        assert parse_basic_credentials(bad) is None
