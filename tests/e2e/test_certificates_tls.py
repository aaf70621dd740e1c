"""The HTTPS listener as a client sees it: the generated chain verifies, weak TLS is refused."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import warnings

import pytest
from cryptography import x509

from e2e.harness import Gateway

pytestmark = pytest.mark.e2e


def handshake(gw: Gateway, context: ssl.SSLContext, server_hostname: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", gw.https_port), timeout=5)
    try:
        return context.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def verifying_context(gw: Gateway) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(gw.ca_pem))


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "::1"])
def test_chain_verifies_for_every_served_name(gw: Gateway, name: str) -> None:
    """A client trusting only ca.pem verifies the leaf for localhost and both loopback IPs
    (for an IP server_hostname, Python's ssl matches it against the IP SANs)."""
    with handshake(gw, verifying_context(gw), name) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert tls.getpeercert() is not None


def test_chain_does_not_verify_for_another_name(gw: Gateway) -> None:
    """Hostname checking is real: a name the certificate does not cover fails."""
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        handshake(gw, verifying_context(gw), "evil.example").close()


def test_leaf_names_cover_hostnames_and_loopback_ips(gw: Gateway) -> None:
    """The leaf's SAN lists localhost, 127.0.0.1 and ::1."""
    leaf = x509.load_pem_x509_certificate((gw.directory / "certs" / "cert.pem").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    ips = san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.0.0.1") in ips
    assert ipaddress.ip_address("::1") in ips


@pytest.mark.parametrize("name", ["ca-key.pem", "key.pem"])
def test_private_keys_are_owner_only(gw: Gateway, name: str) -> None:
    """Private keys are written with mode 0600."""
    mode = (gw.directory / "certs" / name).stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_12_and_13_are_served_with_aead(gw: Gateway, version: ssl.TLSVersion) -> None:
    """Both supported versions negotiate, each with an AEAD cipher and forward secrecy."""
    context = verifying_context(gw)
    context.minimum_version = context.maximum_version = version
    with handshake(gw, context, "localhost") as tls:
        cipher = tls.cipher()
        assert cipher is not None
        name, protocol, _ = cipher
        assert protocol == ("TLSv1.2" if version is ssl.TLSVersion.TLSv1_2 else "TLSv1.3")
        assert "GCM" in name or "CHACHA20" in name
        if version is ssl.TLSVersion.TLSv1_2:
            assert name.startswith("ECDHE-")


def test_alpn_selects_http11(gw: Gateway) -> None:
    """Offered h2 and http/1.1, the gateway picks http/1.1 (it speaks HTTP/1.1 only)."""
    context = verifying_context(gw)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with handshake(gw, context, "localhost") as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"


def test_tls11_client_is_refused(gw: Gateway) -> None:
    """A client that can only speak TLS 1.1 (weak ciphers allowed on its side) fails the
    handshake, and because of the server: the client did offer TLS 1.1."""
    context = verifying_context(gw)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 itself is deprecated
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as info:
        handshake(gw, context, "localhost").close()
    assert "NO_PROTOCOLS_AVAILABLE" not in str(info.value)


def test_cbc_only_tls12_client_is_refused(gw: Gateway) -> None:
    """A TLS 1.2 client offering only CBC cipher suites finds no shared cipher."""
    context = verifying_context(gw)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(
        "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:"
        "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:"
        "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384"
    )
    # The server may answer with a handshake_failure alert or just drop the connection.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(gw, context, "localhost").close()
