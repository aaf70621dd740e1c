"""The certificates the HTTPS listener serves, kept current while it runs.

``TLSService.start`` makes (or checks) the certificates, builds the listener's context with its
SNI selector, and starts the background work: the local leaf is issued again when it nears
expiry (or when another gateway process on the same ``[tls] dir`` has done so), and
``[tls.acme]`` keeps one ACME certificate per public name.  Every swap reaches new handshakes
only; open connections keep the certificate they were made with.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes

from gateway.background import Background
from gateway.config import Settings
from gateway.tls import pemfiles
from gateway.tls.acme import TLS_ALPN01, StoredCertificate, acme_names, renewal_time
from gateway.tls.acme_manager import ACMEManager, HTTP01App
from gateway.tls.certs import CertificateError, CertificatePaths, ensure_certificates
from gateway.tls.context import CertificateSelector, ServedCertificate, challenge_ssl_context

logger = logging.getLogger("gateway.tls")

# The local leaf is looked at this often even when far from renewal, so a leaf renewed by a
# sibling process sharing [tls] dir is picked up within the hour.
LOCAL_RECHECK = timedelta(hours=1)
# A bring-your-own pair is renewed by someone else (certbot, a deploy); a stat this often finds
# the new files.
FILE_POLL = timedelta(seconds=5)


class TLSService:
    def __init__(
        self, settings: Settings, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.selector: CertificateSelector | None = None
        self.acme: ACMEManager | None = None
        self.local = True  # the local CA's leaf, not a [tls] cert_file pair
        self._background = Background()

    def start(self) -> ssl.SSLContext:
        """The listener's context (with SNI); call inside the running event loop."""
        tls, hostnames = self.settings.tls, self.settings.gateway.hostnames
        paths = ensure_certificates(tls, hostnames)
        self.local = paths.ca_file is not None
        stamp = certificate_stamp(paths)  # before loading: a change from now on is seen
        selector = CertificateSelector.from_files(
            paths.cert_file, paths.key_file, self._source, self.settings.gateway.http2
        )
        self.selector = selector
        if self.local:
            self._background.spawn(self._keep_local_leaf(paths), "local leaf renewal")
        else:
            self._background.spawn(self._follow_files(paths, stamp), "certificate file watch")
        names = acme_names(hostnames)
        if tls.acme is not None and names:
            self.acme = ACMEManager(
                tls.acme,
                tls.dir,
                names,
                self._install_acme,
                self._set_alpn_challenge,
                selector.clear_challenge,
            )
            self.acme.load_stored()
            self.acme.start()
            logger.info(
                "ACME (%s, %s) for %s; local names keep the local CA",
                tls.acme.directory,
                tls.acme.challenge,
                ", ".join(names),
            )
        return selector.default

    def http_app(self, app: Any) -> Any:
        """The plain-HTTP listener's app: HTTP-01 answers first when they are needed."""
        if self.acme is None or self.acme.settings.challenge == TLS_ALPN01:
            return app
        return HTTP01App(app, self.acme.challenges)

    def certificates(self) -> list[ServedCertificate]:
        """For ``/api/certificates``: names, expiry, issuer and source of each one served."""
        return self.selector.certificates() if self.selector is not None else []

    async def stop(self) -> None:
        if self.acme is not None:
            await self.acme.stop()
        await self._background.cancel_all()

    @property
    def _source(self) -> str:
        return "local" if self.local else "file"

    def _install_acme(self, name: str, stored: StoredCertificate) -> None:
        assert self.selector is not None
        self.selector.set_name(name, stored.cert_file, stored.key_file, "acme")

    def _set_alpn_challenge(self, name: str, pem: bytes) -> None:
        assert self.selector is not None
        self.selector.set_challenge(name, challenge_ssl_context(pem))

    async def _follow_files(self, paths: CertificatePaths, stamp: tuple[float, ...]) -> None:
        """Serve a replaced ``[tls] cert_file``/``key_file`` pair to new connections."""
        assert self.selector is not None
        selector = self.selector

        def load(cert_file: Path, key_file: Path) -> None:
            selector.replace_default(cert_file, key_file, "file")

        await follow_certificate_files(load, paths, stamp, "new connections")

    async def _keep_local_leaf(self, paths: CertificatePaths) -> None:
        """Issue the local leaf again when it is due and serve it without a restart."""
        assert self.selector is not None
        loaded = pemfiles.read_certificates(paths.cert_file, fix="")[0]
        while True:
            wait = (renewal_time(loaded) - self.clock()).total_seconds()
            # At least a second between looks: a clock far off must not make this a busy loop.
            await asyncio.sleep(min(max(wait, 1.0), LOCAL_RECHECK.total_seconds()))
            try:
                tls, hostnames = self.settings.tls, self.settings.gateway.hostnames
                paths = await asyncio.to_thread(ensure_certificates, tls, hostnames)
                current = pemfiles.read_certificates(paths.cert_file, fix="")[0]
                if current.fingerprint(hashes.SHA256()) != loaded.fingerprint(hashes.SHA256()):
                    self.selector.replace_default(paths.cert_file, paths.key_file, "local")
                    loaded = current
                    logger.info(
                        "serving the renewed local certificate (valid until %s) to new connections",
                        f"{current.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
                    )
            except CertificateError as exc:
                # The old leaf keeps serving; a CA problem needs a human, so say it loudly.
                logger.error("cannot renew the local certificate: %s", exc)
                await asyncio.sleep(LOCAL_RECHECK.total_seconds())


async def follow_certificate_files(
    load: Callable[[Path, Path], None],
    paths: CertificatePaths,
    loaded: tuple[float, ...],
    served_to: str,
) -> None:
    """Call ``load`` with the certificate pair each time either file changes on disk (checked
    every ``FILE_POLL``); a pair that does not load is logged and tried again at its next change.
    ``loaded`` is the pair's ``certificate_stamp`` taken before it was first loaded."""
    refused = loaded
    while True:
        await asyncio.sleep(FILE_POLL.total_seconds())
        current = certificate_stamp(paths)
        if current in (loaded, refused):
            continue
        try:
            load(paths.cert_file, paths.key_file)
        except CertificateError as exc:
            # Often the moment between writing the new certificate and its key: the old
            # pair keeps serving, and the next change is tried again.
            logger.warning("still serving the old certificate to %s: %s", served_to, exc)
            refused = current
            continue
        loaded = current
        logger.info("serving the changed %s to %s", paths.cert_file, served_to)


def certificate_stamp(paths: CertificatePaths) -> tuple[float, ...]:
    """Modification times and sizes of the pair: what changes when either file is replaced."""
    try:
        cert, key = paths.cert_file.stat(), paths.key_file.stat()
    except OSError:
        return ()
    return (cert.st_mtime, cert.st_size, key.st_mtime, key.st_size)
