"""The HTTPS listener's TLS settings, checked with real handshakes over loopback.

Each test runs one handshake against a stdlib TLS server in a thread.  Every socket operation has
a timeout, so the thread always ends, and the server's own view of the handshake (its error, or
what it negotiated) is checked as well as the client's.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from gateway.config import TLSSettings
from gateway.tls.acme import tls_alpn01_certificate
from gateway.tls.certs import CertificateAuthority, CertificateError, CertificatePaths
from gateway.tls.certs import ensure_certificates as ensure
from gateway.tls.context import (
    ACME_TLS_ALPN,
    INTERMEDIATE_CIPHERS,
    SSL_SESS_CACHE_NO_AUTO_CLEAR,
    SSL_SESS_CACHE_SERVER,
    CertificateSelector,
    challenge_ssl_context,
    client_hello_alpn,
    client_ssl_context,
    server_ssl_context,
    session_cache_mode,
)
from gateway.tls.context import _set_groups as set_groups

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


def test_server_context_has_no_stateless_tickets(server_context: ssl.SSLContext) -> None:
    assert server_context.options & ssl.OP_NO_TICKET


def test_the_session_cache_is_kept_without_its_sweep(server_context: ssl.SSLContext) -> None:
    """A server cache, and no walk over it for expired sessions every 255 handshakes."""
    mode = SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_AUTO_CLEAR
    assert session_cache_mode(server_context) == mode


def memory_handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> ssl.SSLObject:
    """A whole handshake between two SSL objects over memory BIOs; the client's object,
    with the session the server issued after it (TLS 1.3 sends it then)."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(to_client, from_client, server_hostname="localhost", session=session)
    peer = server.wrap_bio(to_server, from_server, server_side=True)
    for _ in range(4):
        for side in (tls, peer):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
            to_server.write(from_client.read())
            to_client.write(from_server.read())
    peer.write(b"x")
    to_client.write(from_server.read())
    assert tls.read() == b"x"  # the session ticket came before it
    # A clean close: OpenSSL drops the session of a connection freed without one.
    with contextlib.suppress(ssl.SSLWantReadError):
        peer.unwrap()
    return tls


def test_sessions_resume_after_more_handshakes_than_the_sweep_period(
    certs: CertificatePaths, client_context: ssl.SSLContext
) -> None:
    """The first of 300 sessions (more than the 255 handshakes between two sweeps) still
    resumes: the cache is the server's and keeps its sessions until they expire."""
    server = server_ssl_context(certs.cert_file, certs.key_file)
    first = memory_handshake(server, client_context).session
    for _ in range(300):
        memory_handshake(server, client_context)
    assert server.session_stats()["number"] >= 301
    assert memory_handshake(server, client_context, first).session_reused


@pytest.mark.parametrize(
    ("curve", "accepted"),
    [("X25519", True), ("prime256v1", True), ("secp384r1", True), ("X448", False)]
    + [("secp521r1", False)],
)
def test_tls13_groups_are_exactly_x25519_p256_p384(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, curve: str, accepted: bool
) -> None:
    """A client offering one group only connects only with Mozilla's.  The client's group is
    set as the server's are (``set_groups``): ``set_ecdh_curve`` knows no X25519 or X448 in
    some CPython 3.11 releases (3.11.2, Debian 12's)."""
    client_context.minimum_version = ssl.TLSVersion.TLSv1_3
    set_groups(client_context, curve)
    with one_handshake_server(server_context) as (address, view):
        if accepted:
            assert handshake(address, client_context).received == GREETING
        else:
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                handshake(address, client_context)
    assert (view.error is None) is accepted


# --- SNI: the certificate per name, swapped while running -----------------------------------


@pytest.fixture
def local_ca(certs: CertificatePaths) -> CertificateAuthority:
    return CertificateAuthority.load(certs.cert_file.parent)


def write_leaf(ca: CertificateAuthority, directory: Path, *names: str) -> tuple[Path, Path, int]:
    leaf = ca.issue_leaf(names)
    cert_file, key_file = directory / f"{names[0]}.pem", directory / f"{names[0]}-key.pem"
    cert_file.write_bytes(leaf.cert_pem())
    key_file.write_bytes(leaf.key_pem())
    return cert_file, key_file, leaf.certificate.serial_number


def served_serial(
    selector: CertificateSelector,
    client: ssl.SSLContext,
    name: str,
    alpn: list[str] | None = None,
) -> tuple[int, str | None]:
    if alpn:
        client.set_alpn_protocols(alpn)
    with one_handshake_server(selector.default) as (address, _):
        with socket.create_connection(address, timeout=TIMEOUT) as raw:
            with client.wrap_socket(raw, server_hostname=name) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                protocol = tls.selected_alpn_protocol()
                tls.recv(len(GREETING))
    return x509.load_der_x509_certificate(der).serial_number, protocol


def test_sni_picks_the_certificate_per_name(
    certs: CertificatePaths, local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    selector = CertificateSelector.from_files(certs.cert_file, certs.key_file, "local")
    default_serial = x509.load_pem_x509_certificate(certs.cert_file.read_bytes()).serial_number
    cert_file, key_file, own_serial = write_leaf(local_ca, tmp_path, "example.org")
    selector.set_name("example.org", cert_file, key_file, "acme")
    client = client_ssl_context(certs.cert_file.parent / "ca.pem")
    client.check_hostname = False  # the point here is which certificate, not its names
    assert served_serial(selector, client, "example.org")[0] == own_serial
    assert served_serial(selector, client, "EXAMPLE.ORG")[0] == own_serial
    assert served_serial(selector, client, "localhost")[0] == default_serial
    sources = [(c.names, c.source) for c in selector.certificates()]
    assert sources == [(("localhost", "127.0.0.1", "::1"), "local"), (("example.org",), "acme")]
    as_json = selector.certificates()[1].as_json()
    assert as_json["names"] == ["example.org"] and as_json["not_after"].endswith("Z")


def test_replacing_certificates_reaches_new_handshakes(
    certs: CertificatePaths, local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    selector = CertificateSelector.from_files(certs.cert_file, certs.key_file, "local")
    client = client_ssl_context(certs.cert_file.parent / "ca.pem")
    cert_file, key_file, renewed = write_leaf(local_ca, tmp_path, "localhost", "127.0.0.1")
    selector.replace_default(cert_file, key_file, "local")
    assert served_serial(selector, client, "localhost")[0] == renewed
    first_file, first_key, first = write_leaf(local_ca, tmp_path / "..", "example.org")
    selector.set_name("example.org", first_file, first_key, "acme")
    second_file, second_key, second = write_leaf(local_ca, tmp_path, "example.org")
    selector.set_name("example.org", second_file, second_key, "acme")
    client.check_hostname = False
    assert served_serial(selector, client, "example.org")[0] == second != first
    assert len(selector.certificates()) == 2


def test_tls_alpn01_challenge_only_for_validations(
    certs: CertificatePaths, local_ca: CertificateAuthority, tmp_path: Path
) -> None:
    """During a TLS-ALPN-01 challenge the validation (ALPN acme-tls/1 only) gets the challenge
    certificate; ordinary clients of the same name keep the real one."""
    selector = CertificateSelector.from_files(certs.cert_file, certs.key_file, "local")
    cert_file, key_file, real = write_leaf(local_ca, tmp_path, "example.org")
    selector.set_name("example.org", cert_file, key_file, "acme")
    challenge_pem, challenge_key = tls_alpn01_certificate("example.org", "tok.thumb")
    challenge = x509.load_pem_x509_certificate(challenge_pem).serial_number
    selector.set_challenge("example.org", challenge_ssl_context(challenge_key + challenge_pem))

    def client() -> ssl.SSLContext:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the challenge certificate is self-signed
        return context

    assert served_serial(selector, client(), "example.org", [ACME_TLS_ALPN]) == (
        challenge,
        ACME_TLS_ALPN,
    )
    assert served_serial(selector, client(), "example.org", ["http/1.1"]) == (real, "http/1.1")
    assert served_serial(selector, client(), "example.org")[0] == real
    selector.clear_challenge("example.org")
    assert served_serial(selector, client(), "example.org", [ACME_TLS_ALPN])[0] == real


def test_context_choice_without_a_client_hello_favours_the_challenge(
    certs: CertificatePaths,
) -> None:
    """Where the ClientHello could not be read (None), a pending challenge wins: the name has
    no trusted certificate yet while its first order runs."""
    selector = CertificateSelector.from_files(certs.cert_file, certs.key_file, "local")
    marker = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    selector.set_challenge("example.org", marker)
    assert selector.context_for("example.org", None) is marker
    assert selector.context_for("example.org", ()) is selector.default
    assert selector.context_for(None, None) is selector.default
    assert selector.context_for("other.org", (ACME_TLS_ALPN,)) is selector.default


def client_hello(alpn: list[str] | None) -> bytes:
    """A real ClientHello handshake message, as OpenSSL writes it."""
    context = ssl.create_default_context()
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="example.org")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    record = outgoing.read()
    return record[5:]  # the record header: type, version, length


@pytest.mark.parametrize(
    "alpn", [["acme-tls/1"], ["h2", "http/1.1"], ["http/1.1"]], ids=["acme", "h2", "h1"]
)
def test_client_hello_alpn_offers(alpn: list[str]) -> None:
    assert client_hello_alpn(client_hello(alpn)) == tuple(alpn)


def test_client_hello_without_alpn_and_garbage() -> None:
    assert client_hello_alpn(client_hello(None)) == ()
    assert client_hello_alpn(b"\x01\x00\x00") is None
    assert client_hello_alpn(b"\x02" + bytes(60)) is None
    assert client_hello_alpn(client_hello(["h2"])[:60]) is None
