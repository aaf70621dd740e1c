"""The local certificate authority: creates, reuses and renews the gateway's TLS certificates.

Like mkcert or Caddy's ``tls internal``, the first start creates a private root CA in ``[tls] dir``
(``ca.pem`` + ``ca-key.pem``) and uses it to sign a short-lived leaf certificate (``cert.pem`` +
``key.pem``) for every configured hostname plus 127.0.0.1 and ::1.  A client that trusts
``ca.pem`` verifies the gateway like any public site, and the leaf can be renewed on any start
without touching a trust store again.

Theory of operation:

* The CA is created once and never replaced: it is what people put in their trust stores.  Any
  doubt about it (a certificate without its key, a key without its certificate, a pair that does
  not match, an expired CA) is a :class:`CertificateError` for a human to resolve, never a reason
  to overwrite anything.
* The leaf is disposable.  It is issued again, with a new key, whenever it is missing, unreadable,
  not signed by the current CA, in the last third of its lifetime or missing a name.
* Files are written atomically (a temp file in the same directory, fsync, rename), private keys
  with mode 0600 from their first byte.  A key is renamed into place before its certificate, so a
  crash in between leaves a pair that does not match: the next start re-issues such a leaf and
  reports such a CA.
* Two gateways starting at once serialise on a lock of the directory (POSIX ``flock``).
* With ``[tls] cert_file``/``key_file`` none of this happens: the given pair is checked and used.

``cert.pem`` holds only the leaf.  The root signs it directly, and a root is never sent in a
handshake (the client must already have it), so there is no chain to append.
"""

from __future__ import annotations

import getpass
import ipaddress
import logging
import os
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.config import TLSSettings
from gateway.tls import pemfiles
from gateway.tls.pemfiles import CertificateError

logger = logging.getLogger("gateway.certs")

__all__ = ["CertificateAuthority", "CertificateError", "CertificatePaths", "ensure_certificates"]

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca-key.pem"
LEAF_CERT_NAME = "cert.pem"
LEAF_KEY_NAME = "key.pem"

# Every leaf also covers the loopback addresses, so https://127.0.0.1 and https://[::1] verify.
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")

CA_LIFETIME = timedelta(days=3650)
# Browsers reject leaves valid for more than 398 days; short-lived leaves cost nothing here
# because renewal is automatic and needs no change to any trust store.
LEAF_LIFETIME = timedelta(days=90)
# not_valid_before lies a little in the past so a client whose clock runs behind (a VM, a
# container, a phone on the LAN) does not see a certificate from the future.
BACKDATE = timedelta(hours=1)

CA_ORGANIZATION = "pygateway local development CA"
LEAF_ORGANIZATION = "pygateway local development certificate"

# The CA keys the gateway can sign with: its own (EC P-256) or an adopted RSA one (mkcert's).
CAPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, slots=True)
class CertificatePaths:
    """What the HTTPS listener loads, as decided by :func:`ensure_certificates`."""

    cert_file: Path
    key_file: Path
    # The root clients must trust; None for a bring-your-own pair.
    ca_file: Path | None
    # True when a new leaf was written by this call.
    issued: bool


@dataclass(frozen=True, slots=True)
class LeafCertificate:
    """A server certificate and its private key, as issued by :class:`CertificateAuthority`."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def names(self) -> tuple[str, ...]:
        return certificate_names(self.certificate)

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return _private_key_pem(self.private_key)


class CertificateAuthority:
    """A root CA that signs leaf certificates for the gateway.

    ``create`` makes one in memory, ``load`` reads one from a directory and ``load_or_create``
    does whichever applies, saving a new CA to disk.
    """

    def __init__(self, certificate: x509.Certificate, private_key: CAPrivateKey) -> None:
        if _public_key_der(private_key) != _public_key_der(certificate):
            raise CertificateError("the CA private key does not belong to the CA certificate")
        self.certificate = certificate
        self.private_key = private_key

    @property
    def name(self) -> str:
        """The CA's common name, as trust stores list it."""
        for attribute in self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            return str(attribute.value)
        return self.certificate.subject.rfc4514_string()

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return _private_key_pem(self.private_key)

    @classmethod
    def create(
        cls, *, now: datetime | None = None, lifetime: timedelta = CA_LIFETIME
    ) -> CertificateAuthority:
        """A new root CA (ECDSA P-256) in memory; see :meth:`load_or_create` to keep one."""
        now = now or datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_ORGANIZATION)]
        owner = _owner()
        if owner:
            # Like mkcert's "user@host": tells apart the CAs of several machines in one store.
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, owner))
        # The random part gives each CA a distinct name, so a new CA never shadows an old one.
        common_name = f"pygateway local CA {secrets.token_hex(4)}"
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        name = x509.Name(attributes)
        public_key = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @classmethod
    def load(cls, directory: Path, *, now: datetime | None = None) -> CertificateAuthority:
        """Read ``ca.pem`` and ``ca-key.pem`` from ``directory``; anything amiss is an error."""
        now = now or datetime.now(UTC)
        cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
        recreate = (
            f"delete {cert_path} and {key_path} to create a new local CA "
            "(clients must then trust the new ca.pem)"
        )
        if not os.path.lexists(key_path):
            raise CertificateError(
                f"{cert_path} exists but its private key {key_path} is missing, so no "
                "certificate can be issued; the CA is never replaced automatically because "
                f"clients may trust it. Restore {key_path} from a backup, or {recreate}."
            )
        if not os.path.lexists(cert_path):
            raise CertificateError(
                f"{key_path} exists but its certificate {cert_path} is missing. "
                f"Restore {cert_path} from a backup, or {recreate}."
            )
        certificate = pemfiles.read_certificates(cert_path, fix=recreate)[0]
        key = pemfiles.read_private_key(key_path, fix=recreate)
        if not isinstance(key, CAPrivateKey):
            raise CertificateError(
                f"{key_path} holds a {type(key).__name__}; a local CA key must be EC or RSA. "
                f"To start over, {recreate}."
            )
        if _public_key_der(key) != _public_key_der(certificate):
            raise CertificateError(
                f"{key_path} is not the private key of {cert_path}. Restore the matching key, "
                f"or {recreate}."
            )
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            is_ca = constraints.value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise CertificateError(
                f"{cert_path} is not a CA certificate (no BasicConstraints CA=true), so it "
                f"cannot sign the gateway's certificate; {recreate}."
            )
        if certificate.not_valid_after_utc <= now:
            raise CertificateError(
                f"the local CA {cert_path} expired on {_day(certificate.not_valid_after_utc)}; "
                f"{recreate}."
            )
        pemfiles.warn_if_exposed(key_path)
        return cls(certificate, key)

    @classmethod
    def load_or_create(
        cls, directory: Path, *, now: datetime | None = None
    ) -> CertificateAuthority:
        """The CA in ``directory``, created (and saved) if neither of its files exists yet."""
        cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
        if os.path.lexists(cert_path) or os.path.lexists(key_path):
            ca = cls.load(directory, now=now)
            logger.info("reusing local CA %r: %s", ca.name, cert_path)
            return ca
        pemfiles.make_private_dir(directory)
        ca = cls.create(now=now)
        pemfiles.write_file(key_path, ca.key_pem(), private=True)
        pemfiles.write_file(cert_path, ca.cert_pem(), private=False)
        logger.info(
            "created local CA %r: %s, valid until %s; clients must trust it, e.g. "
            "curl --cacert %s https://localhost:<https_port>/ (more in certs/README.md)",
            ca.name,
            cert_path,
            _day(ca.certificate.not_valid_after_utc),
            cert_path,
        )
        return ca

    def issue_leaf(
        self,
        names: Iterable[str],
        *,
        now: datetime | None = None,
        lifetime: timedelta = LEAF_LIFETIME,
    ) -> LeafCertificate:
        """A new server certificate (with a new ECDSA P-256 key) for exactly ``names``.

        DNS names and IP addresses may be mixed; IPs become IPAddress SANs.  The leaf never
        outlives the CA.  :func:`leaf_names` adds the loopback addresses the gateway serves.
        """
        now = now or datetime.now(UTC)
        normalized = _normalize_names(names)
        if not normalized:
            raise CertificateError("a certificate needs at least one host name or IP address")
        key = ec.generate_private_key(ec.SECP256R1())
        public_key = key.public_key()
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, LEAF_ORGANIZATION)]
        # Clients match on the SANs only; the CN is for humans reading the certificate, and
        # X.509 caps it at 64 characters.
        if len(normalized[0]) <= 64:
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, normalized[0]))
        ca_certificate = self.certificate
        not_before = max(now - BACKDATE, ca_certificate.not_valid_before_utc)
        not_after = min(now + lifetime, ca_certificate.not_valid_after_utc)
        ca_ski = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(ca_certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(_general_names(normalized)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(self.private_key, hashes.SHA256())
        )
        return LeafCertificate(certificate, key)

    def signed(self, certificate: x509.Certificate) -> bool:
        """Whether ``certificate`` was issued (and signed) by this CA."""
        try:
            certificate.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def ensure_certificates(
    tls: TLSSettings, hostnames: Iterable[str], *, now: datetime | None = None
) -> CertificatePaths:
    """Make sure the HTTPS listener has a usable certificate; called once at start-up.

    With ``[tls] cert_file``/``key_file`` the given pair is checked and used as it is.
    Otherwise the local CA in ``[tls] dir`` is loaded or created, and its leaf is reused or
    issued again (see the module docstring for when).  ``now`` exists for tests.
    """
    if isinstance(hostnames, str):
        hostnames = (hostnames,)
    if tls.cert_file is not None or tls.key_file is not None:
        return _bring_your_own(tls, tuple(hostnames), now)
    now = now or datetime.now(UTC)
    directory = tls.dir
    pemfiles.make_private_dir(directory)
    names = leaf_names(hostnames)
    cert_path, key_path = directory / LEAF_CERT_NAME, directory / LEAF_KEY_NAME
    with pemfiles.directory_lock(directory):
        ca = CertificateAuthority.load_or_create(directory, now=now)
        ca_path = directory / CA_CERT_NAME
        reason = _reissue_reason(ca, cert_path, key_path, names, now)
        if reason is None:
            current = pemfiles.read_certificates(cert_path, fix="")[0]
            logger.info(
                "reusing certificate for %s valid until %s: %s",
                ", ".join(certificate_names(current)),
                _day(current.not_valid_after_utc),
                cert_path,
            )
            return CertificatePaths(cert_path, key_path, ca_path, issued=False)
        leaf = ca.issue_leaf(names, now=now)
        pemfiles.write_file(key_path, leaf.key_pem(), private=True)
        pemfiles.write_file(cert_path, leaf.cert_pem(), private=False)
    logger.info(
        "issued certificate for %s valid until %s: %s (%s)",
        ", ".join(leaf.names),
        _day(leaf.certificate.not_valid_after_utc),
        cert_path,
        reason,
    )
    return CertificatePaths(cert_path, key_path, ca_path, issued=True)


def leaf_names(hostnames: Iterable[str]) -> tuple[str, ...]:
    """The names a gateway leaf covers: the configured hostnames, then 127.0.0.1 and ::1."""
    return _normalize_names([*hostnames, *LOOPBACK_ADDRESSES])


def certificate_names(certificate: x509.Certificate) -> tuple[str, ...]:
    """The DNS names and IP addresses in ``certificate``'s subjectAltName, in order."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names: list[str] = []
    for general_name in san:
        if isinstance(general_name, x509.DNSName):
            names.append(general_name.value.lower())
        elif isinstance(general_name, x509.IPAddress):
            names.append(str(general_name.value))
    return tuple(names)


# --- deciding about an existing leaf --------------------------------------------------------


def _reissue_reason(
    ca: CertificateAuthority, cert_path: Path, key_path: Path, names: tuple[str, ...], now: datetime
) -> str | None:
    """Why the leaf at ``cert_path`` must be issued again, or None when it is still good."""
    if not cert_path.exists() or not key_path.exists():
        return "there was none yet"
    try:
        certificate = pemfiles.read_certificates(cert_path, fix="")[0]
        key = pemfiles.read_private_key(key_path, fix="")
    except CertificateError as exc:
        return f"the old one was unusable: {exc}"
    if _public_key_der(key) != _public_key_der(certificate):
        return f"{cert_path} and {key_path} did not match"
    if not ca.signed(certificate):
        return "the old one was not issued by the current local CA"
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    if now < not_before:
        return f"the old one is only valid from {not_before:%Y-%m-%d %H:%M} UTC"
    # Renew once two thirds of the lifetime are used up (Let's Encrypt's rule): an expiring
    # certificate is replaced on some ordinary start long before a client sees it expire.
    renew_at = not_after - (not_after - not_before) / 3
    if now >= renew_at:
        return f"the old one expires on {_day(not_after)}"
    missing = [name for name in names if name not in certificate_names(certificate)]
    if missing:
        return f"the old one did not cover {', '.join(missing)}"
    return None


# --- bring your own -------------------------------------------------------------------------


def _bring_your_own(
    tls: TLSSettings, hostnames: tuple[str, ...], now: datetime | None
) -> CertificatePaths:
    if tls.cert_file is None or tls.key_file is None:
        raise CertificateError("[tls] give both cert_file and key_file, or neither")
    now = now or datetime.now(UTC)
    cert_path, key_path = tls.cert_file, tls.key_file
    fix = "check [tls] cert_file and key_file, or remove both to use the local CA"
    certificate = pemfiles.read_certificates(cert_path, fix=fix)[0]
    key = pemfiles.read_private_key(key_path, fix=fix)
    if _public_key_der(key) != _public_key_der(certificate):
        raise CertificateError(
            f"{key_path} is not the private key of the certificate in {cert_path}; {fix}."
        )
    # A wrong date or name is the user's informed choice (and clients will say so); warn only.
    if certificate.not_valid_after_utc <= now:
        logger.warning(
            "certificate %s expired on %s; clients will reject it",
            cert_path,
            _day(certificate.not_valid_after_utc),
        )
    missing = [name for name in leaf_names(hostnames) if name not in certificate_names(certificate)]
    if missing:
        logger.warning(
            "certificate %s does not cover %s; clients using those names will reject it",
            cert_path,
            ", ".join(missing),
        )
    logger.info(
        "using certificate %s from [tls] cert_file, valid until %s",
        cert_path,
        _day(certificate.not_valid_after_utc),
    )
    return CertificatePaths(cert_path, key_path, None, issued=False)


# --- small helpers --------------------------------------------------------------------------


def _normalize_names(names: Iterable[str]) -> tuple[str, ...]:
    """Lower-cased names and canonical IP addresses, duplicates dropped, order kept."""
    out: dict[str, None] = {}
    for name in names:
        try:
            out[str(ipaddress.ip_address(name))] = None
        except ValueError:
            out[name.lower().rstrip(".")] = None
    return tuple(out)


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    general_names: list[x509.GeneralName] = []
    for name in names:
        try:
            general_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general_names.append(x509.DNSName(name))
    return general_names


def _public_key_der(item: x509.Certificate | PrivateKeyTypes) -> bytes:
    """The SubjectPublicKeyInfo of a certificate or private key, for comparing the two."""
    return item.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _private_key_pem(key: CAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _owner() -> str:
    try:
        owner = f"{getpass.getuser()}@{socket.gethostname()}"
    except (OSError, KeyError):
        return ""
    return owner[:64]


def _day(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d}"
