"""The HTTPS listener as a client sees it: the generated chain verifies, weak TLS is refused."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import ssl
import stat
import subprocess
import warnings
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from e2e.harness import (
    BACKEND_BASE_PORT,
    PYTHON,
    READY_LINE,
    REPO,
    START_TIMEOUT,
    EchoUpstream,
    Gateway,
    ManagedProcess,
    StackConfig,
    echo_upstream,
    free_port,
    one_pool,
    read_response,
    stack,
    toml_table,
)
from gateway.tls.certs import CertificateAuthority, LeafCertificate, leaf_names

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


@pytest.mark.parametrize(
    ("offered", "selected"),
    [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1"), (["http/1.1", "h2"], "h2")],
)
def test_alpn_prefers_h2_and_keeps_http11(gw: Gateway, offered: list[str], selected: str) -> None:
    """With ``[gateway] http2`` (the default) the server's preference decides: h2 when the
    client offers it, HTTP/1.1 for a client that offers only that."""
    context = verifying_context(gw)
    context.set_alpn_protocols(offered)
    with handshake(gw, context, "localhost") as tls:
        assert tls.selected_alpn_protocol() == selected


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


# --- Mozilla "intermediate", checked from outside --------------------------------------------

SSLYZE = REPO / ".venv" / "sslyze" / "bin" / "sslyze"  # installed by .ci/install-tls-tools


def test_sslyze_finds_the_listener_mozilla_intermediate_compliant(gw: Gateway) -> None:
    """sslyze's own Mozilla check: versions, ciphers, groups, certificate (trusting ca.pem)."""
    result = subprocess.run(
        [
            str(SSLYZE),
            "--certinfo_ca_file",
            str(gw.ca_pem),
            f"localhost:{gw.https_port}{{127.0.0.1}}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "OK - Compliant" in result.stdout, result.stdout[-3000:]
    assert result.returncode == 0
    assert re.search(r"Supported curves:\s+X25519, secp256r1, secp384r1\n", result.stdout)


@pytest.mark.parametrize(
    ("group", "server_key"),
    [
        ("X25519", "X25519"),
        ("P-384", "secp384r1"),
        # Not in Mozilla's list: the server falls back to the client's next group, P-256.
        ("X448", "prime256v1"),
        ("P-521", "prime256v1"),
        ("ffdhe2048", "prime256v1"),
    ],
)
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_key_exchange_groups_are_exactly_x25519_p256_p384(
    gw: Gateway, group: str, server_key: str, version: str
) -> None:
    """openssl s_client preferring one group, with P-256 second (under TLS 1.2 the groups also
    name the curves a client accepts for the ECDSA certificate, so P-256 is always needed):
    the server takes the first group only when it is one of Mozilla's three."""
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.https_port}", "-servername"]
        + ["localhost", version, "-groups", f"{group}:P-256", "-CAfile", str(gw.ca_pem)],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    match = re.search(r"Server Temp Key: (?:ECDH, )?([\w-]+)", result.stdout)
    assert match is not None, result.stdout[-1500:] + result.stderr[-500:]
    assert match.group(1) == server_key


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_no_stateless_session_tickets_yet_sessions_resume(
    gw: Gateway, version: ssl.TLSVersion
) -> None:
    """Session tickets are off (Mozilla: the key is never rotated in a long-lived process);
    resumption still works from the server's session cache."""
    context = verifying_context(gw)
    context.minimum_version = context.maximum_version = version
    with handshake(gw, context, "localhost") as tls:
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        read_response(tls)  # TLS 1.3 sessions arrive after the handshake
        session = tls.session
        assert session is not None
        if version is ssl.TLSVersion.TLSv1_2:
            assert not session.has_ticket
        with contextlib.suppress(OSError):
            tls.unwrap()  # a clean close keeps the session resumable
    raw = socket.create_connection(("127.0.0.1", gw.https_port), timeout=5)
    with context.wrap_socket(raw, server_hostname="localhost", session=session) as again:
        assert again.session_reused


# --- the local leaf renewed while running ----------------------------------------------------


def test_local_leaf_is_renewed_while_running_without_dropping_connections(
    tmp_path: Path,
) -> None:
    """A leaf that reaches the last third of its lifetime 4 s after start is issued again by
    the running gateway; new handshakes get the new one (the admin listener's too), an open
    connection keeps working."""
    certs = tmp_path / "gw" / "certs"
    ca = CertificateAuthority.load_or_create(certs)
    # The leaf starts when the CA does (an hour back-dated); renewal is due after two thirds
    # of its lifetime: with 30 min 6 s left from now that is 4 seconds from now.
    leaf = ca.issue_leaf(leaf_names(["localhost"]), lifetime=timedelta(minutes=30, seconds=6))
    (certs / "key.pem").write_bytes(leaf.key_pem())
    (certs / "cert.pem").write_bytes(leaf.cert_pem())
    os.chmod(certs / "key.pem", 0o600)
    admin_port = free_port()
    topology = one_pool(gateway={"keepalive_timeout": 300, "header_timeout": 300})

    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        return replace(topology(upstreams), admin={"port": admin_port})

    def admin_serial() -> int:
        context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        with socket.create_connection(("127.0.0.1", admin_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True) or b""
        return x509.load_der_x509_certificate(der).serial_number

    with stack(tmp_path / "gw", ["a"], build) as s:
        gw = s.gateway
        assert admin_serial() == leaf.certificate.serial_number
        assert gw.log_lines("reusing certificate for localhost")
        with gw.tls_socket() as old:
            first = x509.load_der_x509_certificate(old.getpeercert(binary_form=True) or b"")
            assert first.serial_number == leaf.certificate.serial_number
            old.sendall(b"GET /echo/one HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert read_response(old)[0] == 200
            gw.wait_for_log("serving the renewed local certificate", timeout=30)
            with gw.tls_socket() as new:
                renewed = x509.load_der_x509_certificate(new.getpeercert(binary_form=True) or b"")
            assert renewed.serial_number != first.serial_number
            assert renewed.not_valid_after_utc > first.not_valid_after_utc + timedelta(days=80)
            # the admin listener (a context of its own) follows the renewed files too
            gw.wait_for_log("serving the changed", timeout=30)
            assert admin_serial() == renewed.serial_number
            old.sendall(b"GET /echo/two HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert read_response(old)[0] == 200


def test_bring_your_own_files_replaced_are_served_without_a_restart(tmp_path: Path) -> None:
    """``[tls] cert_file``/``key_file`` replaced on disk (certbot, a deploy): new handshakes
    get the new pair, an open connection keeps working; a half-written pair is not taken."""
    ca = CertificateAuthority.create()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    cert_file, key_file = tmp_path / "site.pem", tmp_path / "site-key.pem"

    def write(leaf: LeafCertificate) -> None:
        key_file.write_bytes(leaf.key_pem())
        cert_file.write_bytes(leaf.cert_pem())

    first = ca.issue_leaf(leaf_names(["localhost"]))
    write(first)
    with echo_upstream("a") as upstream:
        ports = (free_port(), free_port())
        config = tmp_path / "config.toml"
        config.write_text(
            "\n".join(
                [
                    toml_table(
                        "[gateway]",
                        # Open connections idle while the files change: keep them (one
                        # that has not sent its first request yet is under header_timeout).
                        {
                            "host": "127.0.0.1",
                            "http_port": ports[0],
                            "https_port": ports[1],
                            "keepalive_timeout": 300,
                            "header_timeout": 300,
                        },
                    ),
                    toml_table("[tls]", {"cert_file": str(cert_file), "key_file": str(key_file)}),
                    toml_table("[backend]", {"base_port": BACKEND_BASE_PORT, "workers": 1}),
                    toml_table("[upstreams.pool]", {"servers": [upstream.url]}),
                    toml_table("[[routes]]", {"path_prefix": "/", "upstream": "pool"}),
                ]
            )
        )
        process = ManagedProcess([PYTHON, "run_gateway.py", "--config", str(config)])
        try:
            assert process.wait_for_line(READY_LINE, START_TIMEOUT), process.output()
            context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))

            def connect() -> ssl.SSLSocket:
                raw = socket.create_connection(("127.0.0.1", ports[1]), timeout=10)
                return context.wrap_socket(raw, server_hostname="localhost")

            def serial(tls: ssl.SSLSocket) -> int:
                return x509.load_der_x509_certificate(tls.getpeercert(True) or b"").serial_number

            with connect() as old:
                assert serial(old) == first.certificate.serial_number
                # A key that does not match the certificate yet: refused, the old pair stays.
                key_file.write_bytes(ca.issue_leaf(["localhost"]).key_pem())
                assert process.wait_for_line("still serving the old certificate", 30)
                with connect() as tls:
                    assert serial(tls) == first.certificate.serial_number
                second = ca.issue_leaf(leaf_names(["localhost"]))
                write(second)
                assert process.wait_for_line("serving the changed", 30), process.output()
                with connect() as new:
                    assert serial(new) == second.certificate.serial_number
                old.sendall(b"GET /echo/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert read_response(old)[0] == 200
        finally:
            process.stop()
