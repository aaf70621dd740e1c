"""``pygateway trust`` / ``untrust``: the local CA root in every trust store of this machine.

Like ``mkcert -install`` and ``caddy trust``.  Each store is described by pure data: the
commands that add our root, remove it, and tell whether it is there (:class:`TrustStore`).
Building them (per platform, unit-tested everywhere) is apart from running them
(:func:`apply`, on the machine itself), so the macOS and Windows commands are tested without
those systems and only run on them.

* Linux system store: the root as a file in the distribution's anchors directory, then its
  refresh command.  Removal refreshes with ``update-ca-certificates --fresh`` on Debian: a
  plain refresh leaves a dangling symlink in /etc/ssl/certs.
* NSS databases (Chromium reads only ``~/.pki/nssdb`` on Linux; each Firefox profile has its
  own): ``certutil`` with the CA's unique name as nickname.
* Java's ``cacerts`` when ``keytool`` exists (Debian's update hook may add the root there too;
  ``--fresh`` takes that copy away again, and our alias is deleted explicitly).
* Only our root is ever touched: every name used (file, nickname, alias) is derived from the
  CA's own common name, which carries a random part.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from gateway import cli
from gateway.config import ConfigError, load_settings
from gateway.tls.certs import CA_CERT_NAME, CertificateAuthority, CertificateError

Argv = tuple[str, ...]
Which = Callable[[str], str | None]

JAVA_STOREPASS = "changeit"  # the well-known default password of every JDK's cacerts


@dataclass(frozen=True, slots=True)
class RootCA:
    """The root to install, and the names derived from it."""

    pem_file: Path
    common_name: str
    sha1: str  # hex, upper case: how macOS and Windows tools name a certificate
    sha256_colons: str  # AB:CD:..., as keytool prints it
    serial: str  # hex

    @classmethod
    def from_file(cls, pem_file: Path) -> RootCA:
        certificate = x509.load_pem_x509_certificate(pem_file.read_bytes())
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if names else certificate.subject.rfc4514_string()
        der = certificate.public_bytes(serialization.Encoding.DER)
        return cls(
            pem_file=pem_file,
            common_name=common_name,
            sha1=hashlib.sha1(der).hexdigest().upper(),
            sha256_colons=":".join(f"{b:02X}" for b in hashlib.sha256(der).digest()),
            serial=f"{certificate.serial_number:x}",
        )

    @property
    def slug(self) -> str:
        """A file and alias name unique to this CA: ``pygateway-local-ca-1a2b3c4d``."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.common_name.lower()).strip("-")
        return slug if slug.startswith("pygateway") else f"pygateway-{slug}"


@dataclass(frozen=True, slots=True)
class TrustStore:
    """One place a root can be trusted in.

    ``present`` exits 0 when our root is there (and, with ``present_marker``, also prints
    that text).  Whether ``install``/``remove`` worked is decided by running ``present``
    again afterwards, so a removal may try names that turn out not to exist.
    """

    label: str
    present: Argv
    install: tuple[Argv, ...]
    remove: tuple[Argv, ...]
    needs_root: bool
    present_marker: str | None = None


# --- building the commands (pure) -----------------------------------------------------------

# (anchors directory, file suffix, refresh command, refresh after a removal), by distribution.
LINUX_SYSTEM_STORES = (
    (
        "update-ca-certificates",
        Path("/usr/local/share/ca-certificates"),
        ".crt",
        ("update-ca-certificates",),
        ("update-ca-certificates", "--fresh"),
    ),
    (
        "update-ca-trust",
        Path("/etc/pki/ca-trust/source/anchors"),
        ".pem",
        ("update-ca-trust", "extract"),
        ("update-ca-trust", "extract"),
    ),
    (
        "trust",
        Path("/etc/ca-certificates/trust-source/anchors"),
        ".crt",
        ("trust", "extract-compat"),
        ("trust", "extract-compat"),
    ),
)


def linux_system_store(ca: RootCA, which: Which) -> TrustStore | None:
    """Debian/Ubuntu, Fedora/RHEL or Arch, whichever refresh command this machine has."""
    for tool, anchors, suffix, refresh, refresh_after_removal in LINUX_SYSTEM_STORES:
        if which(tool):
            target = str(anchors / f"{ca.slug}{suffix}")
            return TrustStore(
                label=f"system trust store ({target})",
                present=("cmp", "-s", str(ca.pem_file), target),
                install=(("install", "-m", "0644", str(ca.pem_file), target), refresh),
                remove=(("rm", "-f", target), refresh_after_removal),
                needs_root=True,
            )
    return None


def macos_system_store(ca: RootCA) -> TrustStore:
    keychain = "/Library/Keychains/System.keychain"
    return TrustStore(
        label=f"macOS System keychain ({keychain})",
        present=("security", "find-certificate", "-c", ca.common_name, keychain),
        install=(
            ("security", "add-trusted-cert", "-d", "-r", "trustRoot", "-k", keychain)
            + (str(ca.pem_file),),
        ),
        remove=(
            ("security", "remove-trusted-cert", "-d", str(ca.pem_file)),
            ("security", "delete-certificate", "-Z", ca.sha1, keychain),
        ),
        needs_root=True,
    )


def windows_system_store(ca: RootCA) -> TrustStore:
    return TrustStore(
        label="Windows certificate store (LocalMachine\\Root)",
        present=("certutil", "-store", "Root", ca.serial),
        install=(("certutil", "-addstore", "-f", "Root", str(ca.pem_file)),),
        remove=(("certutil", "-delstore", "Root", ca.serial),),
        needs_root=True,
    )


def nss_database_dirs(home: Path, platform: str) -> list[Path]:
    """NSS databases that exist: Chromium/Chrome's, the snap Chromium's, every Firefox
    profile (deb, snap, flatpak; macOS and Windows profile folders)."""
    candidates = [
        home / ".pki" / "nssdb",
        home / "snap" / "chromium" / "current" / ".pki" / "nssdb",
    ]
    profile_roots = [
        home / ".mozilla" / "firefox",
        home / "snap" / "firefox" / "common" / ".mozilla" / "firefox",
        home / ".var" / "app" / "org.mozilla.firefox" / ".mozilla" / "firefox",
    ]
    if platform == "darwin":
        profile_roots = [home / "Library" / "Application Support" / "Firefox" / "Profiles"]
    elif platform == "win32":
        profile_roots = [home / "AppData" / "Roaming" / "Mozilla" / "Firefox" / "Profiles"]
    for root in profile_roots:
        if root.is_dir():
            candidates.extend(sorted(p for p in root.iterdir() if p.is_dir()))
    return [d for d in candidates if (d / "cert9.db").exists() or (d / "cert8.db").exists()]


def nss_store(ca: RootCA, directory: Path, certutil: str = "certutil") -> TrustStore:
    # cert9.db is the SQLite format ("sql:"); cert8.db the legacy Berkeley DB one ("dbm:").
    prefix = "sql:" if (directory / "cert9.db").exists() else "dbm:"
    db = ("-d", f"{prefix}{directory}")
    nickname = ("-n", ca.common_name)
    return TrustStore(
        label=f"NSS database {directory}",
        present=(certutil, "-L", *db, *nickname),
        # "C,," trusts it to issue server certificates (SSL) and nothing else.
        install=((certutil, "-A", *db, "-t", "C,,", *nickname, "-i", str(ca.pem_file)),),
        remove=((certutil, "-D", *db, *nickname),),
        needs_root=False,
    )


def java_cacerts(keytool: str, java_home: str | None = None) -> Path:
    """The JDK's cacerts: ``$JAVA_HOME/lib/security/cacerts``, JAVA_HOME from keytool's path."""
    home = Path(java_home) if java_home else Path(os.path.realpath(keytool)).parent.parent
    return home / "lib" / "security" / "cacerts"


def java_store(ca: RootCA, keytool: str, cacerts: Path, writable: bool) -> TrustStore:
    """Our alias in cacerts.  The root counts as present under any alias (by fingerprint):
    Debian's system-store hook adds it as ``debian:<file>.pem``, and ``--fresh`` does not take
    that copy away again, so removal deletes both names."""
    store = ("-keystore", str(cacerts), "-storepass", JAVA_STOREPASS)
    return TrustStore(
        label=f"Java cacerts ({cacerts})",
        present=(keytool, "-list", *store),
        present_marker=ca.sha256_colons,
        install=(
            (keytool, "-importcert", "-noprompt", *store, "-alias", ca.slug)
            + ("-file", str(ca.pem_file)),
        ),
        remove=(
            (keytool, "-delete", *store, "-alias", ca.slug),
            (keytool, "-delete", *store, "-alias", f"debian:{ca.slug}.pem"),
        ),
        needs_root=not writable,
    )


def trust_stores(
    ca: RootCA,
    *,
    platform: str,
    home: Path,
    which: Which,
    java_home: str | None = None,
    writable: Callable[[Path], bool] = lambda p: os.access(p, os.W_OK),
) -> tuple[list[TrustStore], list[str]]:
    """Every store to change on this platform, in order, and notes about stores skipped.

    The system store comes first so that, on Debian, removing our Java alias happens after
    the system refresh that might have copied the root into cacerts."""
    stores: list[TrustStore] = []
    notes: list[str] = []
    if platform == "darwin":
        stores.append(macos_system_store(ca))
    elif platform == "win32":
        stores.append(windows_system_store(ca))
    else:
        system = linux_system_store(ca, which)
        if system is None:
            notes.append(
                "system trust store: no update-ca-certificates, update-ca-trust or trust "
                "command found; add the root by hand"
            )
        else:
            stores.append(system)
    # Windows' own certutil is another program; NSS's is needed for Firefox there.
    certutil = which("certutil") if platform != "win32" else None
    databases = nss_database_dirs(home, platform)
    if databases and certutil is None:
        notes.append(
            f"{len(databases)} NSS database(s) found but no certutil: install it "
            "(Debian/Ubuntu: apt install libnss3-tools; Fedora: dnf install nss-tools; "
            "macOS: brew install nss) and run this again"
        )
    elif not databases:
        notes.append("no NSS database found (Chromium, Firefox): none to change")
    else:
        stores.extend(nss_store(ca, d, certutil or "certutil") for d in databases)
    keytool = which("keytool")
    if keytool is not None:
        cacerts = java_cacerts(keytool, java_home)
        if cacerts.exists():
            stores.append(java_store(ca, keytool, cacerts, writable(cacerts)))
        else:
            notes.append(f"Java: no cacerts at {cacerts}")
    return stores, notes


# --- running them ---------------------------------------------------------------------------

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def run_command(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)


def apply(
    stores: Iterable[TrustStore],
    *,
    install: bool,
    is_root: bool,
    run: Runner = run_command,
    say: Callable[[str], None] = print,
) -> bool:
    """Add (or remove) the root in every store; one line per store.  False when a store
    could not be changed (it needs root, or a command failed)."""
    verb = "trust" if install else "untrust"
    complete = True
    for store in stores:
        if is_present(store, run) == install:
            say(f"  skipped {store.label}: {'already there' if install else 'not there'}")
            continue
        if store.needs_root and not is_root:
            say(f"  NOT changed {store.label}: needs root; run: sudo pygateway {verb}")
            complete = False
            continue
        failure = "no command failed"
        for command in store.install if install else store.remove:
            result = run(command)
            if result.returncode != 0:
                detail = (result.stderr or result.stdout).strip().splitlines()
                failure = (
                    f"{' '.join(command)} exited with {result.returncode}: "
                    f"{detail[-1] if detail else 'no output'}"
                )
        if is_present(store, run) == install:
            say(f"  {'added to' if install else 'removed from'} {store.label}")
        else:
            say(f"  FAILED {store.label}: {failure}")
            complete = False
    return complete


def is_present(store: TrustStore, run: Runner) -> bool:
    result = run(store.present)
    if result.returncode != 0:
        return False
    return store.present_marker is None or store.present_marker in result.stdout


# --- the subcommands ------------------------------------------------------------------------


def _arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_config_argument(parser)


def root_ca_file(config: str, *, create: bool) -> tuple[Path, str]:
    """The ca.pem to use, and which one it is: the config's ``[tls] dir`` when the config file
    exists, else the per-user CA of ``pygateway proxy``."""
    from gateway.quick_proxy import data_dir

    if Path(config).exists():
        tls = load_settings(config).tls
        if tls.cert_file is not None and create:
            # The local CA would sign nothing: trusting it would only widen the trust store.
            raise CertificateError(
                f"{config} serves its own certificate ([tls] cert_file = {tls.cert_file}), "
                "so there is no local CA to trust"
            )
        directory = tls.dir
        origin = f"the local CA of {config}"
    else:
        directory = data_dir()
        origin = f"no {config} here: the per-user CA of `pygateway proxy`"
    if create and not (directory / CA_CERT_NAME).exists():
        CertificateAuthority.load_or_create(directory)
    return directory / CA_CERT_NAME, origin


def _run(args: argparse.Namespace, install: bool) -> int:
    try:
        ca_file, origin = root_ca_file(args.config, create=install)
        if not ca_file.exists():
            print(f"{ca_file}: no such file, so nothing to remove", file=sys.stderr)
            return 1
        ca = RootCA.from_file(ca_file)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    except (CertificateError, ValueError, OSError) as exc:
        print(f"pygateway: {exc}", file=sys.stderr)
        return 1
    stores, notes = trust_stores(
        ca,
        platform=sys.platform,
        home=Path.home(),
        which=shutil.which,
        java_home=os.environ.get("JAVA_HOME"),
    )
    print(f"{'trusting' if install else 'untrusting'} {ca.common_name!r} ({ca_file}), {origin}:")
    for note in notes:
        print(f"  {note}")
    complete = apply(stores, install=install, is_root=_is_root())
    return 0 if complete else 1


def _is_root() -> bool:
    if sys.platform == "win32":
        import ctypes

        return bool(ctypes.windll.shell32.IsUserAnAdmin())  # type: ignore[attr-defined]
    return os.geteuid() == 0


TRUST_COMMAND = cli.Command(
    "install the local CA root in the system, NSS (Chromium, Firefox) and Java trust stores",
    _arguments,
    lambda args: _run(args, install=True),
)
UNTRUST_COMMAND = cli.Command(
    "remove the local CA root from every store `trust` added it to",
    _arguments,
    lambda args: _run(args, install=False),
)
