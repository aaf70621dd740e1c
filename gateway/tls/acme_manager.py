"""Keeping the ACME certificates current while the gateway runs, in one or many processes.

Every gateway process (``[gateway] workers``) runs an :class:`ACMEManager` on the same
``[tls] dir``, so everything they share lives in files there:

* one process orders a name at a time (a lock file per name); the others see the new
  certificate appear in the store within a second and serve it too;
* the back-off after a failure (``<name>.retry``) is shared, so processes never take turns at
  the CA;
* the challenge answers are files (:class:`ChallengeFiles`): an HTTP-01 token is read when the
  validation request arrives, whichever process accepts it; a TLS-ALPN-01 certificate is picked
  up by every process's watcher before the challenge is answered.

The protocol itself (``acme``, synchronous) runs in daemon threads (:func:`off_loop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from acme import messages

from gateway.background import Background
from gateway.config import ACMESettings
from gateway.tls import pemfiles
from gateway.tls.acme import (
    HTTP01_PREFIX,
    RECHECK,
    TLS_ALPN01,
    ACMEClient,
    ACMEStore,
    StoredCertificate,
    describe_failure,
    renewal_time,
    retry_delay,
    tls_alpn01_certificate,
)
from gateway.tls.pemfiles import CertificateError

logger = logging.getLogger("gateway.acme")

# How often a process looks for TLS-ALPN-01 certificates published by whichever process orders,
# and how long the ordering process waits before telling the CA to validate.
CHALLENGE_POLL = 0.2
CHALLENGE_SETTLE = 4 * CHALLENGE_POLL
# While another process orders a name, the store is looked at this often.
BUSY_POLL = 1.0
TOKEN = re.compile(r"[A-Za-z0-9_-]+")

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


class ChallengeFiles:
    """The answers to the challenges in progress, as files every gateway process reads:
    ``challenges/http-01/<token>`` and ``challenges/tls-alpn-01/<name>.pem``."""

    def __init__(self, root: Path, challenge: str) -> None:
        self.challenge = challenge
        self.http01 = root / "challenges" / "http-01"
        self.tls_alpn01 = root / "challenges" / "tls-alpn-01"

    def publish(self, name: str, token: str, key_authorization: str) -> None:
        if self.challenge == TLS_ALPN01:
            cert_pem, key_pem = tls_alpn01_certificate(name, key_authorization)
            pemfiles.make_private_dir(self.tls_alpn01)
            pemfiles.write_file(self.tls_alpn01 / f"{name}.pem", key_pem + cert_pem, private=True)
            time.sleep(CHALLENGE_SETTLE)  # every process's watcher must have loaded it
        else:
            pemfiles.make_private_dir(self.http01)
            # Not a secret: the CA fetches it over plain HTTP.
            pemfiles.write_file(self.http01 / token, key_authorization.encode(), private=False)

    def unpublish(self, name: str, token: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.http01 / token).unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.tls_alpn01 / f"{name}.pem").unlink()

    def http01_answer(self, token: str) -> bytes | None:
        if not TOKEN.fullmatch(token):
            return None
        try:
            return (self.http01 / token).read_bytes()
        except OSError:
            return None

    def alpn_certificates(self) -> dict[str, float]:
        """The names with a published TLS-ALPN-01 certificate, with its file's mtime."""
        try:
            return {p.stem: p.stat().st_mtime for p in self.tls_alpn01.glob("*.pem")}
        except OSError:
            return {}


class HTTP01App:
    """ASGI app for the plain-HTTP listener: answers ``/.well-known/acme-challenge/<token>``
    (RFC 8555 §8.3) and hands every other request to ``app`` (the HTTPS redirect)."""

    def __init__(self, app: Any, challenges: ChallengeFiles) -> None:
        self.app = app
        self.challenges = challenges

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(HTTP01_PREFIX):
            answer = self.challenges.http01_answer(path[len(HTTP01_PREFIX) :])
            status, body = (200, answer) if answer else (404, b"unknown token\n")
            headers = [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class OrderFailed(Exception):
    def __init__(self, cause: Exception, failures: int, delay: timedelta) -> None:
        super().__init__(describe_failure(cause))
        self.failures = failures
        self.delay = delay


Install = Callable[[str, StoredCertificate], None]
AlpnCertificate = Callable[[str, bytes], None]  # (name, key + certificate PEM)


class ACMEManager:
    """Keeps one ACME certificate per public name current while the gateway runs."""

    def __init__(
        self,
        settings: ACMESettings,
        tls_dir: Path,
        names: tuple[str, ...],
        install: Install,
        set_alpn_certificate: AlpnCertificate,
        clear_alpn_certificate: Callable[[str], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.names = names
        self.store = ACMEStore(tls_dir, settings.directory)
        self.client = ACMEClient(settings, self.store)
        self.challenges = ChallengeFiles(self.store.root, settings.challenge)
        self.install = install
        self.set_alpn_certificate = set_alpn_certificate
        self.clear_alpn_certificate = clear_alpn_certificate
        self.clock = clock
        self._serving: dict[str, int] = {}  # name -> serial number served
        self._background = Background()

    def load_stored(self) -> None:
        """Serve every still-valid stored certificate from the first handshake on."""
        for name in self.names:
            self._serve_stored(name)

    def start(self) -> None:
        jobs = [(self._keep(name), f"acme {name}") for name in self.names]
        if self.settings.challenge == TLS_ALPN01:
            jobs.append((self._follow_alpn_challenges(), "acme tls-alpn-01 watch"))
        for coroutine, name in jobs:
            self._background.spawn(coroutine, name)

    async def stop(self) -> None:
        await self._background.cancel_all()

    def _serve_stored(self, name: str) -> StoredCertificate | None:
        stored = self.store.load(name)
        if stored is None or stored.certificate.not_valid_after_utc <= self.clock():
            return stored
        if self._serving.get(name) != stored.certificate.serial_number:
            try:
                self.install(name, stored)
            except CertificateError as exc:
                logger.error("cannot serve the ACME certificate for %s: %s", name, exc)
            else:
                self._serving[name] = stored.certificate.serial_number
        return stored

    async def _due(self, name: str, stored: StoredCertificate | None) -> datetime:
        due = self.clock()
        if stored is not None:
            due = renewal_time(stored.certificate)
            cert_pem = stored.cert_file.read_bytes()
            suggested = await off_loop(self.client.suggested_renewal, cert_pem)
            if suggested is not None:
                due = min(due, suggested)
        retry = self.store.retry_state(name)
        return max(due, retry[1]) if retry is not None else due

    async def _keep(self, name: str) -> None:
        while True:
            stored = self._serve_stored(name)
            wait = (await self._due(name, stored) - self.clock()).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, RECHECK.total_seconds()))
                continue
            seen = stored.certificate.serial_number if stored is not None else None
            try:
                issued = await off_loop(self._order, name, seen)
            except OrderFailed as exc:
                logger.error(
                    "ACME certificate for %s failed (attempt %d): %s; next attempt in %s, "
                    "meanwhile served with the local CA's certificate",
                    name,
                    exc.failures,
                    exc,
                    exc.delay,
                )
                continue
            if issued is None:  # another process is ordering it: watch the store
                await asyncio.sleep(BUSY_POLL)
                continue
            self._serve_stored(name)
            logger.info(
                "ACME certificate for %s issued by %s, valid until %s",
                name,
                issued.certificate.issuer.rfc4514_string(),
                f"{issued.certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            )

    def _order(self, name: str, seen: int | None) -> StoredCertificate | None:
        """In a thread: a new certificate for ``name``, or None when another process is
        ordering it or already has replaced the one seen (``seen``: its serial number)."""
        with self.store.order_lock(name) as ours:
            if not ours:
                return None
            stored = self.store.load(name)
            if (stored.certificate.serial_number if stored else None) != seen:
                return None  # renewed by another process meanwhile
            try:
                fullchain, key_pem = self.client.issue(
                    name, self.challenges.publish, self.challenges.unpublish
                )
                issued = self.store.save(name, fullchain, key_pem)
            except Exception as exc:
                retry = self.store.retry_state(name)
                failures = (retry[0] if retry else 0) + 1
                delay = retry_delay(failures)
                if isinstance(exc, messages.Error) and exc.code == "rateLimited":
                    delay = max(delay, timedelta(hours=1))
                self.store.record_failure(name, failures, self.clock() + delay)
                raise OrderFailed(exc, failures, delay) from exc
            self.store.clear_failures(name)
            return issued

    async def _follow_alpn_challenges(self) -> None:
        """Give the selector every TLS-ALPN-01 certificate published, by any process."""
        loaded: dict[str, float] = {}
        while True:
            current = self.challenges.alpn_certificates()
            for name, mtime in current.items():
                if loaded.get(name) != mtime and name in self.names:
                    try:
                        pem = (self.challenges.tls_alpn01 / f"{name}.pem").read_bytes()
                        self.set_alpn_certificate(name, pem)
                    except (OSError, CertificateError, ValueError) as exc:
                        logger.warning("cannot load the TLS-ALPN-01 answer for %s: %s", name, exc)
                        continue
            for name in loaded.keys() - current.keys():
                self.clear_alpn_certificate(name)
            loaded = {n: m for n, m in current.items() if n in self.names}
            await asyncio.sleep(CHALLENGE_POLL)
