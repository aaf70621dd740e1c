"""The local CA: what it creates on first start, what it reuses, what it renews, what it refuses."""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from gateway.config import TLSSettings
from gateway.tls.certs import (
    CA_CERT_NAME,
    CA_KEY_NAME,
    LEAF_CERT_NAME,
    LEAF_KEY_NAME,
    CertificateAuthority,
    CertificateError,
    CertificatePaths,
    LeafCertificate,
    certificate_names,
    ensure_certificates,
    leaf_names,
)

ALL_FILES = {CA_CERT_NAME, CA_KEY_NAME, LEAF_CERT_NAME, LEAF_KEY_NAME}


@pytest.fixture
def tls(tmp_path: Path) -> TLSSettings:
    return TLSSettings(dir=tmp_path / "certs")


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_pair(directory: Path, leaf: LeafCertificate) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "byo-cert.pem", directory / "byo-key.pem"
    cert_file.write_bytes(leaf.cert_pem())
    key_file.write_bytes(leaf.key_pem())
    return cert_file, key_file


# --- first start ----------------------------------------------------------------------------


def test_first_start_creates_ca_and_leaf(
    tls: TLSSettings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.certs"):
        paths = ensure_certificates(tls, ("localhost",))

    assert paths == CertificatePaths(
        cert_file=tls.dir / LEAF_CERT_NAME,
        key_file=tls.dir / LEAF_KEY_NAME,
        ca_file=tls.dir / CA_CERT_NAME,
        issued=True,
    )
    assert {path.name for path in tls.dir.iterdir()} == ALL_FILES
    assert mode(tls.dir) == 0o700
    assert mode(tls.dir / CA_KEY_NAME) == 0o600
    assert mode(tls.dir / LEAF_KEY_NAME) == 0o600
    assert mode(tls.dir / CA_CERT_NAME) == 0o644
    assert "created local CA" in caplog.text
    assert f"curl --cacert {tls.dir / CA_CERT_NAME}" in caplog.text
    assert "issued certificate" in caplog.text
    assert "localhost, 127.0.0.1, ::1 valid until" in caplog.text


def test_ca_is_a_p256_root_for_local_development(tls: TLSSettings) -> None:
    ensure_certificates(tls, ("localhost",))
    ca = load_cert(tls.dir / CA_CERT_NAME)

    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert timedelta(days=3640) < lifetime < timedelta(days=3660)
    (organization,) = ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert "local development" in str(organization.value)
    (common_name,) = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert str(common_name.value).startswith("pygateway local CA ")
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)


def test_each_ca_gets_its_own_name() -> None:
    assert CertificateAuthority.create().name != CertificateAuthority.create().name


def test_leaf_is_a_short_lived_server_certificate(tls: TLSSettings) -> None:
    now = datetime.now(UTC)
    ensure_certificates(tls, ("localhost", "app.test"))
    ca = load_cert(tls.dir / CA_CERT_NAME)
    chain = x509.load_pem_x509_certificates((tls.dir / LEAF_CERT_NAME).read_bytes())
    assert len(chain) == 1  # the leaf alone: the root is never sent
    leaf = chain[0]

    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "app.test"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert leaf.issuer == ca.subject
    assert leaf.not_valid_before_utc < now - timedelta(minutes=5)  # backdated for clock skew
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc < timedelta(days=100)
    assert leaf.serial_number > 2**64  # random, not a counter


@pytest.mark.parametrize(
    "subject",
    [
        x509.DNSName("localhost"),
        x509.DNSName("app.test"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ],
    ids=str,
)
def test_leaf_verifies_against_ca(tls: TLSSettings, subject: x509.DNSName | x509.IPAddress) -> None:
    ensure_certificates(tls, ("localhost", "app.test"))
    ca = load_cert(tls.dir / CA_CERT_NAME)
    leaf = load_cert(tls.dir / LEAF_CERT_NAME)
    verifier = (
        PolicyBuilder().store(Store([ca])).time(datetime.now(UTC)).build_server_verifier(subject)
    )

    chain = verifier.verify(leaf, [])

    assert chain == [leaf, ca]


def test_leaf_does_not_verify_for_other_names(tls: TLSSettings) -> None:
    ensure_certificates(tls, ("localhost",))
    ca = load_cert(tls.dir / CA_CERT_NAME)
    leaf = load_cert(tls.dir / LEAF_CERT_NAME)
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName("example.com"))

    with pytest.raises(VerificationError):
        verifier.verify(leaf, [])


# --- later starts ---------------------------------------------------------------------------


def test_second_start_reuses_ca_and_leaf(
    tls: TLSSettings, caplog: pytest.LogCaptureFixture
) -> None:
    ensure_certificates(tls, ("localhost",))
    before = snapshot(tls.dir)

    with caplog.at_level(logging.INFO, logger="gateway.certs"):
        paths = ensure_certificates(tls, ("localhost",))

    assert paths.issued is False
    assert snapshot(tls.dir) == before
    assert "reusing local CA" in caplog.text
    assert "reusing certificate" in caplog.text


def test_changed_hostnames_get_a_new_leaf_from_the_same_ca(tls: TLSSettings) -> None:
    ensure_certificates(tls, ("localhost",))
    before = snapshot(tls.dir)

    paths = ensure_certificates(tls, ("localhost", "app.test"))

    after = snapshot(tls.dir)
    assert paths.issued is True
    assert after[CA_CERT_NAME] == before[CA_CERT_NAME]
    assert after[CA_KEY_NAME] == before[CA_KEY_NAME]
    assert after[LEAF_KEY_NAME] != before[LEAF_KEY_NAME]
    leaf = load_cert(paths.cert_file)
    assert certificate_names(leaf) == ("localhost", "app.test", "127.0.0.1", "::1")
    assert leaf.issuer == load_cert(tls.dir / CA_CERT_NAME).subject


def test_a_name_removed_from_the_config_keeps_the_leaf(tls: TLSSettings) -> None:
    # The leaf only has to cover the configured names; extra ones do no harm.
    ensure_certificates(tls, ("localhost", "app.test"))

    assert ensure_certificates(tls, ("localhost",)).issued is False


def test_leaf_is_renewed_in_the_last_third_of_its_lifetime(tls: TLSSettings) -> None:
    start = datetime.now(UTC)
    ensure_certificates(tls, ("localhost",), now=start)
    ca_before = (tls.dir / CA_CERT_NAME).read_bytes()

    # 90 days of life: kept until day 60, renewed after.
    assert ensure_certificates(tls, ("localhost",), now=start + timedelta(days=59)).issued is False
    later = start + timedelta(days=61)
    paths = ensure_certificates(tls, ("localhost",), now=later)

    assert paths.issued is True
    assert load_cert(paths.cert_file).not_valid_after_utc > later + timedelta(days=80)
    assert (tls.dir / CA_CERT_NAME).read_bytes() == ca_before


def test_leaf_from_another_ca_is_replaced(tls: TLSSettings) -> None:
    ensure_certificates(tls, ("localhost",))
    stranger = CertificateAuthority.create().issue_leaf(leaf_names(["localhost"]))
    (tls.dir / LEAF_CERT_NAME).write_bytes(stranger.cert_pem())
    (tls.dir / LEAF_KEY_NAME).write_bytes(stranger.key_pem())

    paths = ensure_certificates(tls, ("localhost",))

    assert paths.issued is True
    assert load_cert(paths.cert_file).issuer == load_cert(tls.dir / CA_CERT_NAME).subject


@pytest.mark.parametrize("damaged", [LEAF_CERT_NAME, LEAF_KEY_NAME])
def test_unreadable_or_missing_leaf_is_replaced(tls: TLSSettings, damaged: str) -> None:
    ensure_certificates(tls, ("localhost",))
    (tls.dir / damaged).write_bytes(b"not PEM at all")
    assert ensure_certificates(tls, ("localhost",)).issued is True

    (tls.dir / damaged).unlink()
    assert ensure_certificates(tls, ("localhost",)).issued is True


def test_leaf_with_a_foreign_key_is_replaced(tls: TLSSettings) -> None:
    # What a crash between writing key.pem and cert.pem leaves behind.
    ensure_certificates(tls, ("localhost",))
    other = CertificateAuthority.create().issue_leaf(["localhost"])
    (tls.dir / LEAF_KEY_NAME).write_bytes(other.key_pem())

    assert ensure_certificates(tls, ("localhost",)).issued is True


def test_leaf_never_outlives_its_ca() -> None:
    ca = CertificateAuthority.create(lifetime=timedelta(days=30))

    leaf = ca.issue_leaf(["localhost"])

    assert leaf.certificate.not_valid_after_utc == ca.certificate.not_valid_after_utc


def test_leaf_names_are_normalized() -> None:
    assert leaf_names(["LocalHost.", "0:0::1", "app.test"]) == (
        "localhost",
        "::1",
        "app.test",
        "127.0.0.1",
    )


# --- the CA is never replaced ---------------------------------------------------------------


def test_ca_without_its_key_is_an_error_and_nothing_is_overwritten(tls: TLSSettings) -> None:
    ensure_certificates(tls, ("localhost",))
    (tls.dir / CA_KEY_NAME).unlink()
    before = snapshot(tls.dir)

    with pytest.raises(CertificateError) as caught:
        ensure_certificates(tls, ("localhost", "app.test"))

    message = str(caught.value)
    assert str(tls.dir / CA_KEY_NAME) in message
    assert "missing" in message and "Restore" in message
    assert snapshot(tls.dir) == before


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda d: (d / CA_CERT_NAME).unlink(), "ca.pem is missing", id="no-cert"),
        pytest.param(
            lambda d: (d / CA_KEY_NAME).write_bytes(CertificateAuthority.create().key_pem()),
            "is not the private key of",
            id="foreign-key",
        ),
        pytest.param(
            lambda d: (d / CA_CERT_NAME).write_bytes(b"garbage"),
            "does not contain a PEM certificate",
            id="unparsable-cert",
        ),
    ],
)
def test_a_damaged_ca_is_an_error_and_nothing_is_overwritten(
    tls: TLSSettings, damage: Callable[[Path], object], message: str
) -> None:
    ensure_certificates(tls, ("localhost",))
    damage(tls.dir)
    before = snapshot(tls.dir)

    with pytest.raises(CertificateError, match=message):
        ensure_certificates(tls, ("localhost",))

    assert snapshot(tls.dir) == before


def test_expired_ca_is_an_error(tls: TLSSettings) -> None:
    ensure_certificates(tls, ("localhost",))

    with pytest.raises(CertificateError, match="expired on .* delete"):
        ensure_certificates(tls, ("localhost",), now=datetime.now(UTC) + timedelta(days=3700))


def test_existing_directory_keeps_its_mode(tls: TLSSettings) -> None:
    tls.dir.mkdir(mode=0o755)
    os.chmod(tls.dir, 0o755)

    ensure_certificates(tls, ("localhost",))

    assert mode(tls.dir) == 0o755
    assert mode(tls.dir / CA_KEY_NAME) == 0o600


# --- writing files --------------------------------------------------------------------------


def test_writes_leave_no_temporary_files(tls: TLSSettings) -> None:
    ensure_certificates(tls, ("localhost",))
    ensure_certificates(tls, ("localhost", "app.test"))

    assert {path.name for path in tls.dir.iterdir()} == ALL_FILES


def test_a_failed_write_leaves_no_temporary_file(
    tls: TLSSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_certificates(tls, ("localhost",))
    before = snapshot(tls.dir)

    def refuse(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(CertificateError, match="cannot write .*key.pem: Permission denied"):
        ensure_certificates(tls, ("localhost", "app.test"))

    assert snapshot(tls.dir) == before


# --- bring your own certificate -------------------------------------------------------------


def test_bring_your_own_pair_is_used_as_is(tmp_path: Path) -> None:
    leaf = CertificateAuthority.create().issue_leaf(leaf_names(["localhost"]))
    cert_file, key_file = write_pair(tmp_path / "mine", leaf)
    tls = TLSSettings(dir=tmp_path / "certs", cert_file=cert_file, key_file=key_file)

    paths = ensure_certificates(tls, ("localhost",))

    assert paths == CertificatePaths(cert_file, key_file, ca_file=None, issued=False)
    assert not tls.dir.exists()  # no local CA
    assert cert_file.read_bytes() == leaf.cert_pem()
    assert key_file.read_bytes() == leaf.key_pem()


def test_bring_your_own_pair_that_does_not_match_is_an_error(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    cert_file, _ = write_pair(tmp_path / "one", ca.issue_leaf(["localhost"]))
    _, key_file = write_pair(tmp_path / "two", ca.issue_leaf(["localhost"]))
    tls = TLSSettings(dir=tmp_path / "certs", cert_file=cert_file, key_file=key_file)

    with pytest.raises(CertificateError) as caught:
        ensure_certificates(tls, ("localhost",))

    message = str(caught.value)
    assert f"{key_file} is not the private key of the certificate in {cert_file}" in message
    assert "[tls] cert_file and key_file" in message


def test_bring_your_own_missing_file_is_an_error(tmp_path: Path) -> None:
    leaf = CertificateAuthority.create().issue_leaf(["localhost"])
    cert_file, _ = write_pair(tmp_path / "mine", leaf)
    missing = tmp_path / "mine" / "nope.pem"
    tls = TLSSettings(dir=tmp_path / "certs", cert_file=cert_file, key_file=missing)

    with pytest.raises(CertificateError, match=f"cannot read {missing}"):
        ensure_certificates(tls, ("localhost",))


def test_bring_your_own_names_not_covered_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    leaf = CertificateAuthority.create().issue_leaf(["localhost"])
    cert_file, key_file = write_pair(tmp_path / "mine", leaf)
    tls = TLSSettings(dir=tmp_path / "certs", cert_file=cert_file, key_file=key_file)

    with caplog.at_level(logging.WARNING, logger="gateway.certs"):
        ensure_certificates(tls, ("localhost", "app.test"))

    assert "does not cover app.test, 127.0.0.1, ::1" in caplog.text
