"""Certificates from an ACME CA (Let's Encrypt) for the hostnames that are not local.

Theory of operation:

* Local names (localhost, ``*.localhost``, IP addresses, ``*.test``) keep the local CA; every
  other ``hostnames`` entry gets its own ACME certificate, served by SNI
  (:class:`~gateway.tls.context.CertificateSelector`).  Until one is issued, the name is served
  with the local leaf, so the gateway starts at once whatever the CA does.
* One task per name (:mod:`gateway.tls.acme_manager`): load the stored certificate, sleep
  until it is due (a third of its lifetime left, or earlier when the CA's renewal info,
  RFC 9773 "ARI", says so), order a new one, store it, and hand it to the selector, which new
  handshakes use at once.
* The ``acme`` library (certbot's, with josepy) does the protocol; it is synchronous, so each
  order runs in a thread.  It dropped its TLS-ALPN-01 challenge type in version 5, so that type
  is registered here and its certificate is built with ``cryptography`` (RFC 8737).
* A failed order is retried with exponential back-off (5 minutes doubling to a day), so a
  persistent failure costs a few orders a day, well inside Let's Encrypt's limits (5 failed
  validations per name per hour).
* Files live under ``[tls] dir``/acme/<directory host>/: ``account-key.pem`` (created once) and
  ``<name>/cert.pem`` (full chain) + ``<name>/key.pem``, all mode 0600.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ObjectIdentifier
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from gateway.config import ACMESettings
from gateway.tls import pemfiles
from gateway.tls.pemfiles import CertificateError

logger = logging.getLogger("gateway.acme")

HTTP01 = "http-01"
TLS_ALPN01 = "tls-alpn-01"
# RFC 8737 §3: the critical extension carrying sha256(key authorization).
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
HTTP01_PREFIX = "/.well-known/acme-challenge/"

FIRST_RETRY = timedelta(minutes=5)
LONGEST_RETRY = timedelta(days=1)
# Even a certificate far from renewal is looked at again this often (ARI may change its mind).
RECHECK = timedelta(hours=6)
ORDER_TIMEOUT = timedelta(seconds=90)
LOCAL_SUFFIXES = (".localhost", ".test")


def is_local_name(name: str) -> bool:
    """Names no public CA will certify: they keep the local CA."""
    name = name.lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name == "localhost" or name.endswith(LOCAL_SUFFIXES) or "." not in name


def acme_names(hostnames: tuple[str, ...]) -> tuple[str, ...]:
    """The hostnames that get ACME certificates (wildcards need DNS-01, which is not done)."""
    return tuple(n for n in hostnames if not is_local_name(n) and not n.startswith("*."))


def renewal_time(certificate: x509.Certificate) -> datetime:
    """When a third of the certificate's lifetime is left (Let's Encrypt's advice)."""
    not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return not_after - (not_after - not_before) / 3


def retry_delay(failures: int) -> timedelta:
    """Back-off after ``failures`` failed orders in a row: 5 min, 10, 20, ... at most a day."""
    delay: timedelta = FIRST_RETRY * (2 ** min(max(0, failures - 1), 16))
    return min(delay, LONGEST_RETRY)


# --- TLS-ALPN-01 (RFC 8737) -----------------------------------------------------------------


class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    typ = TLS_ALPN01


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    response_cls = TLSALPN01Response
    typ = TLS_ALPN01

    def validation(self, account_key: JWK, **kwargs: Any) -> str:
        return self.key_authorization(account_key)


def tls_alpn01_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """The self-signed certificate that answers a TLS-ALPN-01 validation of ``name``."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode()).digest()
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ACME challenge")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        # DER OCTET STRING (0x04, length 32) of the digest.
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key)


# --- storage --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredCertificate:
    cert_file: Path
    key_file: Path
    certificate: x509.Certificate


class ACMEStore:
    """The account key and the certificates of one ACME directory, under ``[tls] dir``."""

    def __init__(self, tls_dir: Path, directory_url: str) -> None:
        parts = urlsplit(directory_url)
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", parts.netloc or "acme") or "acme"
        self.root = tls_dir / "acme" / slug

    def account_key(self) -> JWKEC:
        """The account key, created on first use (EC P-256, mode 0600)."""
        path = self.root / "account-key.pem"
        pemfiles.make_private_dir(self.root)
        with pemfiles.directory_lock(self.root):
            if not path.exists():
                pemfiles.write_file(
                    path, _key_pem(ec.generate_private_key(ec.SECP256R1())), private=True
                )
                logger.info("created ACME account key %s", path)
            key = pemfiles.read_private_key(path, fix=f"delete {path} to create a new account")
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError(f"{path} must hold an EC key; delete it to create a new one")
        return JWKEC(key=key)

    def paths(self, name: str) -> tuple[Path, Path]:
        return self.root / name / "cert.pem", self.root / name / "key.pem"

    def load(self, name: str) -> StoredCertificate | None:
        cert_file, key_file = self.paths(name)
        if not cert_file.exists() or not key_file.exists():
            return None
        try:
            certificate = pemfiles.read_certificates(cert_file, fix="")[0]
        except CertificateError as exc:
            logger.warning("ignoring the stored ACME certificate for %s: %s", name, exc)
            return None
        return StoredCertificate(cert_file, key_file, certificate)

    def save(self, name: str, fullchain_pem: bytes, key_pem: bytes) -> StoredCertificate:
        cert_file, key_file = self.paths(name)
        pemfiles.make_private_dir(cert_file.parent)
        # Key first: a crash in between leaves a pair that does not load, so it is ordered again.
        pemfiles.write_file(key_file, key_pem, private=True)
        pemfiles.write_file(cert_file, fullchain_pem, private=True)
        certificate = x509.load_pem_x509_certificates(fullchain_pem)[0]
        return StoredCertificate(cert_file, key_file, certificate)

    # Failures and the next attempt are shared by every gateway process on this directory,
    # so worker processes back off together instead of taking turns at the CA.
    def retry_state(self, name: str) -> tuple[int, datetime] | None:
        """(failures in a row, earliest next attempt), or None after a success."""
        try:
            failures, when = (self.root / f"{name}.retry").read_text().split()
            return int(failures), datetime.fromisoformat(when)
        except (OSError, ValueError):
            return None

    def record_failure(self, name: str, failures: int, next_attempt: datetime) -> None:
        pemfiles.make_private_dir(self.root)
        path = self.root / f"{name}.retry"
        pemfiles.write_file(path, f"{failures} {next_attempt.isoformat()}\n".encode(), private=True)

    def clear_failures(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / f"{name}.retry").unlink()

    @contextlib.contextmanager
    def order_lock(self, name: str) -> Iterator[bool]:
        """Whether this process may order ``name`` now (no other process is ordering it)."""
        if sys.platform == "win32":
            yield True  # one gateway process per directory there
            return
        import fcntl

        pemfiles.make_private_dir(self.root)
        fd = os.open(self.root / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the lock


# --- the protocol, synchronous (runs in a thread) -------------------------------------------

Publish = Callable[[str, str, str], None]  # (name, token, key authorization)


class ACMEClient:
    """One account at one ACME directory; ``issue`` runs a whole order for one name."""

    def __init__(self, settings: ACMESettings, store: ACMEStore) -> None:
        self.settings = settings
        self.store = store
        self._client: client.ClientV2 | None = None
        self._lock = threading.Lock()

    def _connect(self) -> client.ClientV2:
        with self._lock:
            if self._client is not None:
                return self._client
            key = self.store.account_key()
            verify: Any = str(self.settings.ca_file) if self.settings.ca_file else True
            net = client.ClientNetwork(
                key, alg=ES256, verify_ssl=verify, user_agent="pygateway", timeout=30
            )
            directory = client.ClientV2.get_directory(self.settings.directory, net)
            acme = client.ClientV2(directory, net)
            registration = messages.NewRegistration.from_data(
                email=self.settings.email, terms_of_service_agreed=True
            )
            try:
                account = acme.new_account(registration)
            except errors.ConflictError as exc:  # this key already has an account: reuse it
                account = messages.RegistrationResource(
                    uri=exc.location, body=messages.Registration()
                )
                net.account = account
                account = acme.query_registration(account)
            net.account = account
            logger.info("ACME account %s at %s", account.uri, self.settings.directory)
            self._client = acme
            return acme

    def issue(
        self, name: str, publish: Publish, unpublish: Callable[[str, str], None]
    ) -> tuple[bytes, bytes]:
        """Order, validate and download a certificate for ``name``: (full chain, key) PEM."""
        acme = self._connect()
        key_pem = _key_pem(ec.generate_private_key(ec.SECP256R1()))
        order = acme.new_order(crypto_util.make_csr(key_pem, [name]))
        wanted = TLSALPN01 if self.settings.challenge == TLS_ALPN01 else challenges.HTTP01
        published: list[str] = []
        try:
            for authorization in order.authorizations:
                if authorization.body.status == messages.STATUS_VALID:
                    continue
                challenge = next(
                    (c for c in authorization.body.challenges if isinstance(c.chall, wanted)),
                    None,
                )
                if challenge is None:
                    raise errors.Error(
                        f"the CA offers no {self.settings.challenge} challenge for {name}"
                    )
                response, key_authorization = challenge.response_and_validation(acme.net.key)
                token = challenge.chall.encode("token")
                publish(name, token, key_authorization)
                published.append(token)
                acme.answer_challenge(challenge, response)
            deadline = datetime.now() + ORDER_TIMEOUT
            order = acme.poll_and_finalize(order, deadline=deadline)
        finally:
            for token in published:
                unpublish(name, token)
        return order.fullchain_pem.encode(), key_pem

    def suggested_renewal(self, cert_pem: bytes) -> datetime | None:
        """The CA's renewal time (ARI) when it offers one, else None."""
        try:
            when, _ = self._connect().renewal_time(cert_pem)
        except Exception as exc:  # ARI is advice: the lifetime rule still applies
            logger.debug("no ACME renewal info: %s", exc)
            return None
        if when is None:
            return None
        return when if when.tzinfo else when.replace(tzinfo=UTC)


def describe_failure(exc: BaseException) -> str:
    """One readable line: the CA's own problem document, or why it could not be reached."""
    if isinstance(exc, messages.Error):
        return f"{exc.typ}: {exc.detail}" if exc.detail else str(exc)
    if isinstance(exc, requests.ConnectionError):
        url: str | bytes | None = exc.request.url if exc.request is not None else None
        if isinstance(url, bytes):
            url = url.decode("ascii", "replace")
        url = url or "the ACME directory"
        reason = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
        return f"cannot reach {url}: {reason.group(1) if reason else type(exc).__name__}"
    text = str(exc) or type(exc).__name__
    return text if len(text) < 400 else text[:400] + "..."


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
