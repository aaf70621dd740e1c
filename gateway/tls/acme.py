"""Certificates from an ACME CA (Let's Encrypt) for the hostnames that are not local.

Theory of operation:

* Local names (localhost, ``*.localhost``, IP addresses, ``*.test``) keep the local CA; every
  other ``hostnames`` entry gets its own ACME certificate, served by SNI
  (:class:`~gateway.tls.context.CertificateSelector`).  Until one is issued, the name is served
  with the local leaf, so the gateway starts at once whatever the CA does.
* One task per name: load the stored certificate, sleep until it is due (a third of its
  lifetime left, or earlier when the CA's renewal info, RFC 9773 "ARI", says so), order a new
  one, store it, and hand it to the selector, which new handshakes use at once.
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

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import re
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
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


# --- the manager, on the event loop ---------------------------------------------------------

T = TypeVar("T")


async def off_loop(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a daemon thread.  Unlike ``asyncio.to_thread`` the gateway's
    shutdown never waits for it: an order hanging on an unresponsive CA must not hold up a
    graceful stop (the thread's result is simply dropped)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return  # cancelled meanwhile
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = function(*args), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(deliver, result, error)

    threading.Thread(target=run, name="acme", daemon=True).start()
    return await future


Install = Callable[[str, StoredCertificate], None]


class ACMEManager:
    """Keeps one ACME certificate per public name current while the gateway runs."""

    def __init__(
        self,
        settings: ACMESettings,
        tls_dir: Path,
        names: tuple[str, ...],
        install: Install,
        challenges: ChallengeBoard,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.names = names
        self.store = ACMEStore(tls_dir, settings.directory)
        self.client = ACMEClient(settings, self.store)
        self.install = install
        self.challenges = challenges
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    def load_stored(self) -> None:
        """Serve every still-valid stored certificate from the first handshake on."""
        for name in self.names:
            stored = self.store.load(name)
            if stored is not None and stored.certificate.not_valid_after_utc > self.clock():
                self._install(name, stored)

    def start(self) -> None:
        for name in self.names:
            task = asyncio.create_task(self._keep(name), name=f"acme {name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _keep(self, name: str) -> None:
        failures = 0
        while True:
            stored = self.store.load(name)
            due = self.clock()
            if stored is not None:
                due = renewal_time(stored.certificate)
                cert_pem = stored.cert_file.read_bytes()
                suggested = await off_loop(self.client.suggested_renewal, cert_pem)
                if suggested is not None:
                    due = min(due, suggested)
            wait = (due - self.clock()).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, RECHECK.total_seconds()))
                continue
            try:
                stored = await self._order(name)
            except Exception as exc:
                failures += 1
                delay = retry_delay(failures)
                rate_limited = isinstance(exc, messages.Error) and exc.code == "rateLimited"
                if rate_limited:
                    delay = max(delay, timedelta(hours=1))
                logger.error(
                    "ACME certificate for %s failed (attempt %d): %s; "
                    "next attempt in %s, meanwhile served with the local CA's certificate",
                    name,
                    failures,
                    _describe(exc),
                    delay,
                )
                await asyncio.sleep(delay.total_seconds())
                continue
            failures = 0
            self._install(name, stored)
            logger.info(
                "ACME certificate for %s issued by %s, valid until %s",
                name,
                stored.certificate.issuer.rfc4514_string(),
                f"{stored.certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            )

    async def _order(self, name: str) -> StoredCertificate:
        loop = asyncio.get_running_loop()

        def on_loop(call: Callable[[], Coroutine[Any, Any, None]]) -> None:
            asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=30)

        def publish(name: str, token: str, key_authorization: str) -> None:
            on_loop(lambda: self.challenges.publish(name, token, key_authorization))

        def unpublish(name: str, token: str) -> None:
            on_loop(lambda: self.challenges.unpublish(name, token))

        fullchain, key_pem = await off_loop(self.client.issue, name, publish, unpublish)
        return await off_loop(self.store.save, name, fullchain, key_pem)

    def _install(self, name: str, stored: StoredCertificate) -> None:
        try:
            self.install(name, stored)
        except CertificateError as exc:
            logger.error("cannot serve the ACME certificate for %s: %s", name, exc)


class ChallengeBoard:
    """The answers to the challenges in progress: HTTP-01 tokens and TLS-ALPN-01 certificates."""

    def __init__(
        self,
        set_alpn_certificate: Callable[[str, bytes, bytes], None],
        clear_alpn_certificate: Callable[[str], None],
    ) -> None:
        self.http01: dict[str, str] = {}
        self._set_alpn = set_alpn_certificate
        self._clear_alpn = clear_alpn_certificate

    async def publish(self, name: str, token: str, key_authorization: str) -> None:
        self.http01[token] = key_authorization
        cert_pem, key_pem = tls_alpn01_certificate(name, key_authorization)
        self._set_alpn(name, cert_pem, key_pem)

    async def unpublish(self, name: str, token: str) -> None:
        self.http01.pop(token, None)
        self._clear_alpn(name)


class HTTP01App:
    """ASGI app for the plain-HTTP listener: answers ``/.well-known/acme-challenge/<token>``
    (RFC 8555 §8.3) and hands every other request to ``app`` (the HTTPS redirect)."""

    def __init__(self, app: Any, board: ChallengeBoard) -> None:
        self.app = app
        self.board = board

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(HTTP01_PREFIX):
            answer = self.board.http01.get(path[len(HTTP01_PREFIX) :])
            status, body = (200, answer.encode()) if answer else (404, b"unknown token\n")
            headers = [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def _describe(exc: BaseException) -> str:
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
