"""``pygateway trust`` / ``untrust`` for real on this machine: the system store, NSS databases
in a temporary HOME, Java's cacerts, and headless Chromium loading the gateway.

The system store and cacerts are the machine's own: the test adds a freshly generated root and
checks that ``untrust`` leaves both exactly as they were (other roots untouched).  Running as
root is required for that part (the CI runs as root).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.harness import PYTHON, REPO, Gateway, Stack, one_pool, stack
from gateway import cli
from gateway.tls import trust

pytestmark = pytest.mark.e2e

SYSTEM_DIRS = (Path("/etc/ssl/certs"), Path("/usr/local/share/ca-certificates"))


def make_nss_db(directory: Path) -> None:
    directory.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{directory}", "--empty-password"], check=True)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A HOME with Chromium's NSS database and one Firefox profile."""
    home = tmp_path / "home"
    make_nss_db(home / ".pki" / "nssdb")
    make_nss_db(home / ".mozilla" / "firefox" / "abcd.default-release")
    return home


@pytest.fixture
def gateway_stack(tmp_path: Path) -> Iterator[Stack]:
    with stack(tmp_path / "stack", ["a"], one_pool()) as s:
        yield s


def pygateway(*args: str, home: Path) -> str:
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share")}
    command = [PYTHON, "-m", "gateway", *args]
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}"


def java_aliases() -> set[str]:
    keytool = shutil.which("keytool")
    assert keytool is not None
    listing = subprocess.run(
        [keytool, "-list", "-cacerts", "-storepass", "changeit"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split(",")[0] for line in listing.splitlines() if "trustedCertEntry" in line}


def system_store() -> dict[Path, set[str]]:
    return {d: set(os.listdir(d)) for d in SYSTEM_DIRS}


def changes_besides_others(before: dict[Path, set[str]], slug: str) -> list[str]:
    """Entries of the system store removed since ``before``, or added and ours (or dangling).
    Another test run's own root, added meanwhile by a concurrent suite, is not a change."""
    problems: list[str] = []
    for directory, entries in system_store().items():
        problems += [f"removed {directory / e}" for e in before[directory] - entries]
        for entry in entries - before[directory]:
            target = os.path.realpath(directory / entry)
            if slug in target or not os.path.exists(target) or "pygateway" not in target:
                problems.append(f"added {directory / entry} -> {target}")
    return problems


def nss_has(db: Path, nickname: str) -> bool:
    command = ["certutil", "-L", "-d", f"sql:{db}", "-n", nickname]
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def system_trusts(gw: Gateway) -> bool:
    """Whether a client using only the system's default roots accepts the gateway."""
    context = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", gw.https_port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost"):
                return True
        except ssl.SSLCertVerificationError:
            return False


def chromium_loads(gw: Gateway, home: Path, profile: Path) -> tuple[bool, str]:
    """Headless Chromium (whose only user roots on Linux are the NSS database in HOME)
    loading the gateway: (loaded without a certificate error, what it said)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium is not None
    result = subprocess.run(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",  # required when running as root
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--dump-dom",
            f"https://localhost:{gw.https_port}/",
        ],
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    loaded = "ERR_CERT" not in result.stderr and '"server": "a"' in result.stdout
    return loaded, result.stdout[-300:] + result.stderr[-300:]


def test_trust_then_untrust_everywhere(home: Path, gateway_stack: Stack, tmp_path: Path) -> None:
    gw = gateway_stack.gateway
    before_system, before_java = system_store(), java_aliases()
    nickname = ""
    try:
        assert not system_trusts(gw)
        loaded, said = chromium_loads(gw, home, tmp_path / "chromium-1")
        assert not loaded, said

        out = pygateway("trust", "--config", str(gw.config_path), home=home)
        assert out.startswith("exit 0"), out
        assert f"the local CA of {gw.config_path}" in out
        nickname = out.split("'")[1]
        assert "added to system trust store (/usr/local/share/ca-certificates/" in out
        assert f"added to NSS database {home / '.pki' / 'nssdb'}" in out
        assert "added to NSS database" in out and "abcd.default-release" in out
        assert "Java cacerts" in out

        assert system_trusts(gw)
        for db in (home / ".pki" / "nssdb", home / ".mozilla/firefox/abcd.default-release"):
            assert nss_has(db, nickname)
        slug = trust.RootCA.from_file(gw.ca_pem).slug
        assert any(slug in alias for alias in java_aliases() - before_java)
        loaded, said = chromium_loads(gw, home, tmp_path / "chromium-2")
        assert loaded, said

        again = pygateway("trust", "--config", str(gw.config_path), home=home)
        assert again.startswith("exit 0"), again
        assert again.count("already there") == 4 and "added" not in again, again

        out = pygateway("untrust", "--config", str(gw.config_path), home=home)
        assert out.startswith("exit 0"), out
        assert out.count("removed from") == 4, out
        assert not system_trusts(gw)
        assert not nss_has(home / ".pki" / "nssdb", nickname)
        loaded, said = chromium_loads(gw, home, tmp_path / "chromium-3")
        assert not loaded, said
        # Exactly what trust added is gone: no dangling link, no Java copy, other roots kept.
        assert changes_besides_others(before_system, slug) == []
        after_java = java_aliases()
        assert before_java <= after_java
        assert not [alias for alias in after_java - before_java if slug in alias]
    finally:
        if nickname:  # never leave the test root trusted, whatever failed above
            pygateway("untrust", "--config", str(gw.config_path), home=home)


def test_without_root_nss_is_done_and_the_system_store_needs_sudo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where no config.toml exists the per-user CA of ``pygateway proxy`` is used (and
    created); without root, NSS is changed and the system store is not.  The interpreter
    lives under /root here, so no other user can run it: the command runs in-process with
    only the root check answered "no"."""
    home = tmp_path / "home"
    make_nss_db(home / ".pki" / "nssdb")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.chdir(home)
    monkeypatch.setattr(trust, "_is_root", lambda: False)
    before = system_store()

    assert cli.main(["trust"]) == 1
    out = capsys.readouterr().out
    assert "no config.toml here: the per-user CA of `pygateway proxy`" in out
    assert str(home / ".local" / "share" / "pygateway" / "ca.pem") in out
    assert "NOT changed system trust store" in out
    assert "run: sudo pygateway trust" in out
    assert f"added to NSS database {home / '.pki' / 'nssdb'}" in out
    assert nss_has(home / ".pki" / "nssdb", out.split("'")[1])
    user_ca = trust.RootCA.from_file(home / ".local" / "share" / "pygateway" / "ca.pem")
    assert changes_besides_others(before, user_ca.slug) == []

    assert cli.main(["untrust"]) == 0
    out = capsys.readouterr().out
    assert f"removed from NSS database {home / '.pki' / 'nssdb'}" in out
    assert "skipped system trust store" in out and "not there" in out
