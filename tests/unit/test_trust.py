"""``pygateway trust``: the commands built for every platform and the logic that runs them,
with a fake command runner (the real stores are changed in tests/e2e/test_trust.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway import cli
from gateway.tls.certs import CertificateAuthority
from gateway.tls.trust import (
    RootCA,
    TrustStore,
    apply,
    java_cacerts,
    java_store,
    linux_system_store,
    macos_system_store,
    nss_database_dirs,
    nss_store,
    trust_stores,
    windows_system_store,
)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> RootCA:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(CertificateAuthority.create().cert_pem())
    return RootCA.from_file(path)


def only(*tools: str):  # type: ignore[no-untyped-def]
    return lambda name: f"/usr/bin/{name}" if name in tools else None


def test_root_names_derive_from_the_ca_common_name(ca: RootCA) -> None:
    assert ca.common_name.startswith("pygateway local CA ")
    suffix = ca.common_name.rsplit(" ", 1)[1]
    assert ca.slug == f"pygateway-local-ca-{suffix}"
    assert len(ca.sha1) == 40 and ca.sha1.isupper()
    assert len(ca.sha256_colons.split(":")) == 32


def test_a_foreign_ca_name_gets_the_pygateway_prefix(ca: RootCA) -> None:
    foreign = RootCA(ca.pem_file, "mkcert dev@host", ca.sha1, ca.sha256_colons, ca.serial)
    assert foreign.slug == "pygateway-mkcert-dev-host"


def test_debian_system_store(ca: RootCA) -> None:
    store = linux_system_store(ca, only("update-ca-certificates", "trust"))
    target = f"/usr/local/share/ca-certificates/{ca.slug}.crt"
    assert store == TrustStore(
        label=f"system trust store ({target})",
        present=("cmp", "-s", str(ca.pem_file), target),
        install=(
            ("install", "-m", "0644", str(ca.pem_file), target),
            ("update-ca-certificates",),
        ),
        # A plain refresh leaves a dangling symlink in /etc/ssl/certs.
        remove=(("rm", "-f", target), ("update-ca-certificates", "--fresh")),
        needs_root=True,
    )


def test_fedora_system_store(ca: RootCA) -> None:
    store = linux_system_store(ca, only("update-ca-trust"))
    assert store is not None
    target = f"/etc/pki/ca-trust/source/anchors/{ca.slug}.pem"
    assert store.install == (
        ("install", "-m", "0644", str(ca.pem_file), target),
        ("update-ca-trust", "extract"),
    )
    assert store.remove == (("rm", "-f", target), ("update-ca-trust", "extract"))


def test_arch_system_store(ca: RootCA) -> None:
    store = linux_system_store(ca, only("trust"))
    assert store is not None
    target = f"/etc/ca-certificates/trust-source/anchors/{ca.slug}.crt"
    assert store.install[1] == ("trust", "extract-compat")
    assert store.remove == (("rm", "-f", target), ("trust", "extract-compat"))


def test_no_known_system_store(ca: RootCA) -> None:
    assert linux_system_store(ca, only()) is None


def test_macos_commands(ca: RootCA) -> None:
    store = macos_system_store(ca)
    keychain = "/Library/Keychains/System.keychain"
    assert store.install == (
        (
            "security",
            "add-trusted-cert",
            "-d",
            "-r",
            "trustRoot",
            "-k",
            keychain,
            str(ca.pem_file),
        ),
    )
    assert store.remove == (
        ("security", "remove-trusted-cert", "-d", str(ca.pem_file)),
        ("security", "delete-certificate", "-Z", ca.sha1, keychain),
    )
    assert store.present == ("security", "find-certificate", "-c", ca.common_name, keychain)
    assert store.needs_root


def test_windows_commands(ca: RootCA) -> None:
    store = windows_system_store(ca)
    assert store.install == (("certutil", "-addstore", "-f", "Root", str(ca.pem_file)),)
    assert store.remove == (("certutil", "-delstore", "Root", ca.serial),)
    assert store.present == ("certutil", "-store", "Root", ca.serial)


def test_nss_databases_found(tmp_path: Path) -> None:
    chromium = tmp_path / ".pki" / "nssdb"
    snap = tmp_path / "snap" / "chromium" / "current" / ".pki" / "nssdb"
    profiles = tmp_path / ".mozilla" / "firefox"
    firefox, legacy, empty = profiles / "a.default", profiles / "b.old", profiles / "c.none"
    for directory in (chromium, snap, firefox, legacy, empty):
        directory.mkdir(parents=True)
    for db in (chromium / "cert9.db", snap / "cert9.db", firefox / "cert9.db"):
        db.touch()
    (legacy / "cert8.db").touch()
    assert nss_database_dirs(tmp_path, "linux") == [chromium, snap, firefox, legacy]


@pytest.mark.parametrize(
    ("platform", "profiles"),
    [
        ("darwin", "Library/Application Support/Firefox/Profiles"),
        ("win32", "AppData/Roaming/Mozilla/Firefox/Profiles"),
    ],
)
def test_firefox_profiles_on_other_platforms(tmp_path: Path, platform: str, profiles: str) -> None:
    profile = tmp_path / profiles / "x.default-release"
    profile.mkdir(parents=True)
    (profile / "cert9.db").touch()
    assert nss_database_dirs(tmp_path, platform) == [profile]


def test_nss_commands_sql_and_dbm(ca: RootCA, tmp_path: Path) -> None:
    (tmp_path / "cert9.db").touch()
    store = nss_store(ca, tmp_path)
    db = ("-d", f"sql:{tmp_path}")
    assert store.install == (
        ("certutil", "-A", *db, "-t", "C,,", "-n", ca.common_name, "-i", str(ca.pem_file)),
    )
    assert store.remove == (("certutil", "-D", *db, "-n", ca.common_name),)
    assert store.present == ("certutil", "-L", *db, "-n", ca.common_name)
    assert not store.needs_root
    (tmp_path / "cert9.db").unlink()
    (tmp_path / "cert8.db").touch()
    assert nss_store(ca, tmp_path).present[3] == f"dbm:{tmp_path}"


def test_java_cacerts_location(tmp_path: Path) -> None:
    jdk = tmp_path / "jdk"
    (jdk / "bin").mkdir(parents=True)
    (jdk / "bin" / "keytool").touch()
    (tmp_path / "keytool").symlink_to(jdk / "bin" / "keytool")
    assert java_cacerts(str(tmp_path / "keytool")) == jdk / "lib" / "security" / "cacerts"
    assert java_cacerts("/x/bin/keytool", "/opt/java") == Path("/opt/java/lib/security/cacerts")


def test_java_commands(ca: RootCA) -> None:
    store = java_store(ca, "keytool", Path("/j/cacerts"), writable=False)
    common = ("-keystore", "/j/cacerts", "-storepass", "changeit")
    assert store.install == (
        ("keytool", "-importcert", "-noprompt", *common, "-alias", ca.slug)
        + ("-file", str(ca.pem_file)),
    )
    assert store.remove == (
        ("keytool", "-delete", *common, "-alias", ca.slug),
        ("keytool", "-delete", *common, "-alias", f"debian:{ca.slug}.pem"),
    )
    assert store.present_marker == ca.sha256_colons
    assert store.needs_root


def test_stores_in_order_with_notes(ca: RootCA, tmp_path: Path) -> None:
    (tmp_path / ".pki" / "nssdb").mkdir(parents=True)
    (tmp_path / ".pki" / "nssdb" / "cert9.db").touch()
    jdk = tmp_path / "jdk"
    (jdk / "lib" / "security").mkdir(parents=True)
    (jdk / "lib" / "security" / "cacerts").touch()
    stores, notes = trust_stores(
        ca,
        platform="linux",
        home=tmp_path,
        which=only("update-ca-certificates", "certutil", "keytool"),
        java_home=str(jdk),
        writable=lambda p: True,
    )
    assert [s.label.split(" (")[0] for s in stores] == [
        "system trust store",
        f"NSS database {tmp_path / '.pki' / 'nssdb'}",
        "Java cacerts",
    ]
    assert notes == []
    assert stores[1].present[0] == "/usr/bin/certutil"


def test_notes_for_what_cannot_be_done(ca: RootCA, tmp_path: Path) -> None:
    (tmp_path / ".pki" / "nssdb").mkdir(parents=True)
    (tmp_path / ".pki" / "nssdb" / "cert9.db").touch()
    stores, notes = trust_stores(ca, platform="linux", home=tmp_path, which=only())
    assert stores == []
    assert "no update-ca-certificates" in notes[0]
    assert "no certutil" in notes[1] and "libnss3-tools" in notes[1]


def test_windows_never_uses_its_own_certutil_for_nss(ca: RootCA, tmp_path: Path) -> None:
    profile = tmp_path / "AppData/Roaming/Mozilla/Firefox/Profiles/p"
    profile.mkdir(parents=True)
    (profile / "cert9.db").touch()
    stores, _ = trust_stores(ca, platform="win32", home=tmp_path, which=only("certutil"))
    assert [s.label for s in stores] == ["Windows certificate store (LocalMachine\\Root)"]


# --- apply(), against a fake machine -------------------------------------------------------


class FakeMachine:
    """Stores as a set of labels; ``add``/``rm`` commands change it, ``has`` checks it."""

    def __init__(self, fail: str | None = None) -> None:
        self.trusted: set[str] = set()
        self.ran: list[tuple[str, ...]] = []
        self.fail = fail

    def run(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        verb, name = command[0], command[1]
        self.ran.append(tuple(command))
        code = 0
        if name == self.fail and verb != "has":
            return subprocess.CompletedProcess(command, 3, "", "boom\nlast words")
        if verb == "has":
            code = 0 if name in self.trusted else 1
        elif verb == "add":
            self.trusted.add(name)
        elif verb == "rm":
            if name not in self.trusted:
                code = 1  # like deleting an alias that does not exist
            self.trusted.discard(name)
        return subprocess.CompletedProcess(command, code, "", "")


def store(name: str, needs_root: bool = False) -> TrustStore:
    return TrustStore(
        label=name,
        present=("has", name),
        install=(("add", name),),
        remove=(("rm", name), ("rm", "other-name-" + name)),
        needs_root=needs_root,
    )


def test_trust_then_again_then_untrust() -> None:
    machine, said = FakeMachine(), []
    stores = [store("system", needs_root=True), store("nss")]
    assert apply(stores, install=True, is_root=True, run=machine.run, say=said.append)
    assert said == ["  added to system", "  added to nss"]
    said.clear()
    assert apply(stores, install=True, is_root=True, run=machine.run, say=said.append)
    assert said == ["  skipped system: already there", "  skipped nss: already there"]
    said.clear()
    # A removal command that fails (an alias that was never there) is fine when the root is
    # gone afterwards.
    assert apply(stores, install=False, is_root=True, run=machine.run, say=said.append)
    assert said == ["  removed from system", "  removed from nss"]
    assert machine.trusted == set()


def test_not_root_changes_the_rest_and_says_sudo() -> None:
    machine, said = FakeMachine(), []
    stores = [store("system", needs_root=True), store("nss")]
    assert not apply(stores, install=True, is_root=False, run=machine.run, say=said.append)
    assert said == [
        "  NOT changed system: needs root; run: sudo pygateway trust",
        "  added to nss",
    ]
    assert machine.trusted == {"nss"}


def test_a_failing_command_is_reported_with_its_last_line() -> None:
    machine, said = FakeMachine(fail="nss"), []
    assert not apply([store("nss")], install=True, is_root=True, run=machine.run, say=said.append)
    assert said == ["  FAILED nss: add nss exited with 3: last words"]


def test_present_marker_must_be_in_the_output() -> None:
    listing = TrustStore("java", ("list",), (), (), False, present_marker="AB:CD")

    def run(stdout: str):  # type: ignore[no-untyped-def]
        return lambda cmd: subprocess.CompletedProcess(cmd, 0, stdout, "")

    said: list[str] = []
    apply([listing], install=True, is_root=True, run=run("x AB:CD y"), say=said.append)
    assert said == ["  skipped java: already there"]
    said.clear()
    apply([listing], install=False, is_root=True, run=run("other roots"), say=said.append)
    assert said == ["  skipped java: not there"]


def test_trust_refuses_a_config_with_its_own_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[tls]\ncert_file = "site.pem"\nkey_file = "site-key.pem"\n'
        '[upstreams.app]\nservers = ["http://127.0.0.1:9"]\n'
        '[[routes]]\npath_prefix = "/"\nupstream = "app"\n'
    )
    assert cli.main(["trust", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "serves its own certificate ([tls] cert_file" in err
    assert not (tmp_path / "certs").exists()  # no CA was created for nothing


def test_untrust_without_a_ca_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[upstreams.app]\nservers = ["http://127.0.0.1:9"]\n'
        '[[routes]]\npath_prefix = "/"\nupstream = "app"\n'
    )
    assert cli.main(["untrust", "--config", str(config)]) == 1
    assert f"{tmp_path / 'certs' / 'ca.pem'}: no such file" in capsys.readouterr().err


def test_a_bad_config_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[tls]\ndri = 'x'\n")
    assert cli.main(["trust", "--config", str(config)]) == 1
    assert "[tls] dri" in capsys.readouterr().err
