"""PEM files of certificates and keys: read with clear errors, written atomically and privately.

Everything here is file handling for ``gateway.tls.certs``: a temp file in the same directory,
fsync, rename (readers see the old file or the new one, never a mix), private keys with mode
0600 from their first byte, and a directory lock so two gateways starting at once do not both
create a CA.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

logger = logging.getLogger("gateway.certs")


class CertificateError(Exception):
    """A certificate or key file is missing, unreadable or inconsistent; the message says how to
    fix it."""


def _read(path: Path, hint: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror or exc}{hint}") from exc


def read_certificates(path: Path, *, fix: str) -> list[x509.Certificate]:
    """The PEM certificates in ``path`` (the first is the leaf); CertificateError otherwise.
    ``fix`` is appended to every message: what the user can do about it."""
    hint = f"; {fix}" if fix else ""
    data = _read(path, hint)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(
            f"{path} does not contain a PEM certificate (-----BEGIN CERTIFICATE-----){hint}"
        ) from exc


def read_private_key(path: Path, *, fix: str) -> PrivateKeyTypes:
    """The unencrypted PEM private key in ``path``; CertificateError otherwise."""
    hint = f"; {fix}" if fix else ""
    data = _read(path, hint)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        # The gateway starts unattended, so it cannot ask for a passphrase.
        raise CertificateError(
            f"{path} is encrypted; give an unencrypted key "
            f"(e.g. openssl pkey -in {path.name} -out plain-{path.name}){hint}"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError(
            f"{path} does not contain a PEM private key (-----BEGIN PRIVATE KEY-----){hint}"
        ) from exc
    return key


def write_file(path: Path, data: bytes, *, private: bool) -> None:
    """Replace ``path`` atomically: readers see the old file or the new one, never a mix."""
    try:
        # mkstemp creates the file with mode 0600, so a key is never readable by others,
        # not even for the moment between creating and filling it.
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
            if not private:
                os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        fsync_directory(path.parent)
    except OSError as exc:
        raise CertificateError(
            f"cannot write {path}: {exc.strerror or exc}; make {path.parent} writable "
            "or point [tls] dir at a writable directory"
        ) from exc


def fsync_directory(directory: Path) -> None:
    """Make a rename durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_private_dir(directory: Path) -> None:
    try:
        # 0700 only applies when the directory is new; an existing one keeps the mode its
        # owner chose (the key files themselves are 0600 either way).
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertificateError(
            f"cannot create the certificate directory {directory}: {exc.strerror or exc}; "
            "set [tls] dir to a writable directory"
        ) from exc


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` so concurrent starts do not both create a CA."""
    if sys.platform == "win32":
        yield
        return
    import fcntl

    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield  # best effort: an unlockable directory only loses the race protection
        return
    try:
        with contextlib.suppress(OSError):  # e.g. ENOLCK on some network file systems
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def warn_if_exposed(key_path: Path) -> None:
    if os.name == "posix" and key_path.stat().st_mode & 0o077:
        logger.warning(
            "%s can be read by other users, who could then impersonate any site to this "
            "machine; run: chmod 600 %s",
            key_path,
            key_path,
        )
