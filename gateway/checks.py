"""``pygateway check``: problems beyond the config file itself, found without starting anything.

The config loader already checked every key; here the files and ports the config names are
tried the way start-up would use them: the ``[tls]`` certificate and key are loaded (a garbage
``cert_file`` must fail here, not at the first handshake), an existing local CA is read, and
each listen port is bound and released.
"""

from __future__ import annotations

from gateway.config import Settings
from gateway.listeners import port_problems
from gateway.tls.certs import (
    CA_CERT_NAME,
    CertificateAuthority,
    CertificateError,
    ensure_certificates,
)
from gateway.tls.context import server_ssl_context
from gateway.tls.pemfiles import read_certificates


def certificate_problems(settings: Settings) -> list[str]:
    tls = settings.tls
    try:
        if tls.cert_file is not None or tls.key_file is not None:
            paths = ensure_certificates(tls, settings.gateway.hostnames)  # reads, never writes
            server_ssl_context(paths.cert_file, paths.key_file)
        elif (tls.dir / CA_CERT_NAME).exists():
            CertificateAuthority.load(tls.dir)
    except CertificateError as exc:
        return [f"{settings.path}: [tls]: {exc}"]
    return acme_problems(settings)


def acme_problems(settings: Settings) -> list[str]:
    """``[tls.acme] ca_file`` must hold PEM certificates (the CA itself is not contacted)."""
    acme = settings.tls.acme
    if acme is None or acme.ca_file is None:
        return []
    try:
        read_certificates(acme.ca_file, fix="point [tls.acme] ca_file at the ACME CA's PEM root")
    except CertificateError as exc:
        return [f"{settings.path}: [tls.acme] ca_file: {exc}"]
    return []


def check_environment(settings: Settings) -> list[str]:
    """Every problem start-up would hit, one line each (empty: ready to run)."""
    problems = port_problems(settings.gateway)
    if settings.admin is not None and settings.admin.enabled:
        from gateway.admin.server import check_admin_port
        from gateway.listeners import ListenError

        try:
            check_admin_port(settings)
        except ListenError as exc:
            problems.append(str(exc))
    return certificate_problems(settings) + [f"{settings.path}: {line}" for line in problems]
