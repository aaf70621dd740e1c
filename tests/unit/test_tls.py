"""The HTTPS listener's TLS settings, checked with real handshakes over loopback.

Each test runs one handshake against a stdlib TLS server in a thread.  Every socket operation has
a timeout, so the thread always ends, and the server's own view of the handshake (its error, or
what it negotiated) is checked as well as the client's.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import TLSSettings
from gateway.tls.certs import CertificateAuthority, CertificateError, CertificatePaths
from gateway.tls.certs import ensure_certificates as ensure
from gateway.tls.context import INTERMEDIATE_CIPHERS, client_ssl_context, server_ssl_context

TIMEOUT = 5.0
GREETING = b"hello"
AEAD_TLS12 = set(INTERMEDIATE_CIPHERS.split(":"))

Address = tuple[str, int]


@dataclass
class ServerView:
    """What the server thread saw: the negotiated parameters, or the error that ended it."""

    version: str | None = None
    cipher: str | None = None
    alpn: str | None = None
    error: OSError | None = None


@dataclass(frozen=True)
class ClientView:
    version: str | None
    cipher: str | None
    alpn: str | None
    received: bytes


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    tls = TLSSettings(dir=tmp_path_factory.mktemp("tls") / "certs")
    return ensure(tls, ("localhost",))


@pytest.fixture(scope="module")
def server_context(certs: CertificatePaths) -> ssl.SSLContext:
    return server_ssl_context(certs.cert_file, certs.key_file)


@pytest.fixture
def client_context(certs: CertificatePaths) -> ssl.SSLContext:
    assert certs.ca_file is not None
    return client_ssl_context(certs.ca_file)


@contextmanager
def one_handshake_server(context: ssl.SSLContext) -> Iterator[tuple[Address, ServerView]]:
    """Accept one connection, handshake, send a greeting; read the view after the block."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    view = ServerView()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            view.error = exc
            return
        with conn:
            conn.settimeout(TIMEOUT)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    view.version = tls.version()
                    cipher = tls.cipher()
                    view.cipher = cipher[0] if cipher else None
                    view.alpn = tls.selected_alpn_protocol()
                    tls.sendall(GREETING)
            except OSError as exc:  # ssl.SSLError included
                view.error = exc

    thread = threading.Thread(target=serve, name="tls-test-server", daemon=True)
    thread.start()
    try:
        host, port = listener.getsockname()[:2]
        yield (host, port), view
    finally:
        thread.join(2 * TIMEOUT)
        listener.close()
    assert not thread.is_alive(), "the server thread did not end"


def handshake(address: Address, context: ssl.SSLContext, hostname: str = "localhost") -> ClientView:
    with socket.create_connection(address, timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=hostname) as tls:
            cipher = tls.cipher()
            return ClientView(
                version=tls.version(),
                cipher=cipher[0] if cipher else None,
                alpn=tls.selected_alpn_protocol(),
                received=tls.recv(len(GREETING)),
            )


# --- handshakes that succeed ----------------------------------------------------------------


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1"])
def test_tls13_client_trusting_the_ca_verifies_the_server(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, hostname: str
) -> None:
    with one_handshake_server(server_context) as (address, server):
        client = handshake(address, client_context, hostname)

    assert server.error is None
    assert client.version == server.version == "TLSv1.3"
    assert client.received == GREETING


def test_tls12_client_with_default_ciphers_gets_an_aead_cipher(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client_context.maximum_version = ssl.TLSVersion.TLSv1_2

    with one_handshake_server(server_context) as (address, server):
        client = handshake(address, client_context)

    assert server.error is None
    assert client.version == "TLSv1.2"
    assert client.cipher in AEAD_TLS12
    assert client.cipher is not None and ("GCM" in client.cipher or "CHACHA20" in client.cipher)


def test_tls12_client_may_choose_chacha20(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client_context.maximum_version = ssl.TLSVersion.TLSv1_2
    client_context.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305")

    with one_handshake_server(server_context) as (address, server):
        client = handshake(address, client_context)

    assert server.error is None
    assert client.cipher == server.cipher == "ECDHE-ECDSA-CHACHA20-POLY1305"


def test_alpn_selects_http11(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client_context.set_alpn_protocols(["h2", "http/1.1"])

    with one_handshake_server(server_context) as (address, server):
        client = handshake(address, client_context)

    assert client.alpn == server.alpn == "http/1.1"


def test_h2_only_client_still_connects_without_alpn(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    # No common protocol: the server answers without ALPN rather than failing the handshake,
    # and the client falls back to HTTP/1.1 (what curl --http2 does).
    client_context.set_alpn_protocols(["h2"])

    with one_handshake_server(server_context) as (address, server):
        client = handshake(address, client_context)

    assert server.error is None
    assert client.alpn is None


# --- handshakes that must fail --------------------------------------------------------------


def assert_server_refuses(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, reason: str
) -> None:
    """The handshake fails on both sides, and the server's own error names ``reason``."""
    with one_handshake_server(server_context) as (address, server):
        with pytest.raises(ssl.SSLError):
            handshake(address, client_context)

    assert isinstance(server.error, ssl.SSLError)
    assert server.error.reason == reason


def test_tls11_client_is_refused(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    # SECLEVEL=0 lets the client offer TLS 1.1 at all, so the refusal comes from the server.
    client_context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning):
        client_context.minimum_version = ssl.TLSVersion.TLSv1_1
        client_context.maximum_version = ssl.TLSVersion.TLSv1_1

    assert_server_refuses(server_context, client_context, "UNSUPPORTED_PROTOCOL")


def test_tls12_client_with_only_cbc_ciphers_is_refused(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client_context.maximum_version = ssl.TLSVersion.TLSv1_2
    client_context.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")

    assert_server_refuses(server_context, client_context, "NO_SHARED_CIPHER")


def test_client_rejects_a_name_the_certificate_does_not_cover(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with one_handshake_server(server_context) as (address, server):
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            handshake(address, client_context, "example.com")

    assert isinstance(server.error, ssl.SSLError)


def test_client_not_trusting_the_ca_rejects_the_server(
    server_context: ssl.SSLContext, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(CertificateAuthority.create().cert_pem())

    with one_handshake_server(server_context) as (address, server):
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            handshake(address, client_ssl_context(other_ca))

    assert isinstance(server.error, ssl.SSLError)


# --- the context itself ---------------------------------------------------------------------


def test_server_context_settings(server_context: ssl.SSLContext) -> None:
    assert server_context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert server_context.options & ssl.OP_NO_COMPRESSION
    assert server_context.options & ssl.OP_NO_RENEGOTIATION
    assert not server_context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    tls12 = {c["name"] for c in server_context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == AEAD_TLS12
    assert all(c["aead"] for c in server_context.get_ciphers())


def test_server_context_with_a_mismatched_pair_is_a_certificate_error(
    certs: CertificatePaths, tmp_path: Path
) -> None:
    stranger_key = tmp_path / "key.pem"
    stranger_key.write_bytes(CertificateAuthority.create().issue_leaf(["localhost"]).key_pem())

    with pytest.raises(CertificateError, match=f"cannot load the certificate {certs.cert_file}"):
        server_ssl_context(certs.cert_file, stranger_key)


def test_server_context_with_a_missing_file_is_a_certificate_error(
    certs: CertificatePaths, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"

    with pytest.raises(CertificateError, match=f"cannot load {missing}: no such file"):
        server_ssl_context(certs.cert_file, missing)
