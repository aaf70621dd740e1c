"""ACME against a real Pebble server: both challenge types, SNI per name, restart and reuse,
renewal while running, an unreachable directory.

Pebble validates on the gateway's own ports (``httpPort``/``tlsPort`` in its config), and every
name resolves to 127.0.0.1, so ``app.example.org`` is validated exactly as Let's Encrypt would
validate a public name, only on loopback.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from support.pebble import Pebble, pebble_server

from e2e.harness import (
    BACKEND_BASE_PORT,
    PYTHON,
    READY_LINE,
    START_TIMEOUT,
    EchoUpstream,
    Gateway,
    ManagedProcess,
    echo_upstream,
    free_port,
    read_response,
    toml_table,
)

pytestmark = pytest.mark.e2e

PUBLIC = "app.example.org"
ISSUED = f"ACME certificate for {PUBLIC} issued"


@pytest.fixture
def upstream() -> Iterator[EchoUpstream]:
    with echo_upstream("a") as u:
        yield u


@contextlib.contextmanager
def acme_gateway(
    directory: Path,
    ports: tuple[int, int],
    upstream: EchoUpstream,
    acme: dict[str, str],
    workers: int = 1,
) -> Iterator[Gateway]:
    http_port, https_port = ports
    config = "\n".join(
        [
            toml_table(
                "[gateway]",
                {
                    "host": "127.0.0.1",
                    "http_port": http_port,
                    "https_port": https_port,
                    "hostnames": ["localhost", PUBLIC],
                    "workers": workers,
                    # Connections opened before a renewal idle through it: keep them open.
                    "keepalive_timeout": 300,
                },
            ),
            toml_table("[tls]", {"dir": str(directory / "certs")}),
            toml_table("[tls.acme]", acme),
            toml_table("[backend]", {"base_port": BACKEND_BASE_PORT, "workers": 1}),
            toml_table("[upstreams.pool]", {"servers": [upstream.url]}),
            toml_table("[[routes]]", {"path_prefix": "/", "upstream": "pool"}),
        ]
    )
    config_path = directory / "config.toml"
    config_path.write_text(config)
    process = ManagedProcess([PYTHON, "run_gateway.py", "--config", str(config_path)])
    try:
        ready = process.wait_for_line(READY_LINE, START_TIMEOUT)
        assert ready is not None, f"the gateway did not become ready:\n{process.output()}"
        yield Gateway(directory, config_path, http_port, https_port, process)
    finally:
        process.stop()


def acme_settings(pebble: Pebble, challenge: str) -> dict[str, str]:
    return {
        "email": "ops@example.org",
        "directory": pebble.directory_url,
        "challenge": challenge,
        "ca_file": str(pebble.ca_file),
    }


def connect(gw: Gateway, name: str, cafile: Path) -> ssl.SSLSocket:
    """A verifying TLS connection with SNI ``name`` that trusts only ``cafile``."""
    context = ssl.create_default_context(cafile=str(cafile))
    raw = socket.create_connection(("127.0.0.1", gw.https_port), timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname=name)
    except BaseException:
        raw.close()
        raise


def served_certificate(tls: ssl.SSLSocket) -> x509.Certificate:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def get(tls: ssl.SSLSocket, name: str, path: str = "/") -> int:
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    status, _, _ = read_response(tls)
    return status


def free_ports() -> tuple[int, int]:
    http_port, https_port = free_port(), free_port()
    while https_port == http_port:
        https_port = free_port()
    return http_port, https_port


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_issues_serves_by_sni_and_reuses_after_restart(
    tmp_path: Path, upstream: EchoUpstream, challenge: str
) -> None:
    ports = free_ports()
    with pebble_server(tmp_path / "pebble", http_port=ports[0], tls_port=ports[1]) as pebble:
        settings = acme_settings(pebble, challenge)
        with acme_gateway(tmp_path, ports, upstream, settings) as gw:
            # Local names are served at once, whatever the ACME order is doing.
            with connect(gw, "localhost", gw.ca_pem) as tls:
                assert get(tls, "localhost") == 200
            gw.wait_for_log(ISSUED, timeout=60)
            root = tmp_path / "pebble-root.pem"
            root.write_bytes(pebble.issuer_root())
            with connect(gw, PUBLIC, root) as tls:
                issued = served_certificate(tls)
                assert get(tls, PUBLIC) == 200
            with connect(gw, "localhost", gw.ca_pem) as tls:  # SNI picks per name
                local = served_certificate(tls)
            assert issued.issuer != local.issuer
            san = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert san.value.get_values_for_type(x509.DNSName) == [PUBLIC]
            acme_dir = next((tmp_path / "certs" / "acme").iterdir())
            for private in [acme_dir / "account-key.pem", *acme_dir.glob(f"{PUBLIC}/*.pem")]:
                assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
        with acme_gateway(tmp_path, ports, upstream, settings) as gw:
            with connect(gw, PUBLIC, root) as tls:  # the stored certificate, first handshake
                assert served_certificate(tls).serial_number == issued.serial_number
            assert not gw.log_lines(ISSUED)


def test_renewed_while_running_without_dropping_connections(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    """A 12-second certificate is due after 8 seconds: the new one reaches new handshakes while
    a connection made with the old one keeps working."""
    ports = free_ports()
    with pebble_server(
        tmp_path / "pebble", http_port=ports[0], tls_port=ports[1], validity_seconds=12
    ) as pebble:
        with acme_gateway(tmp_path, ports, upstream, acme_settings(pebble, "tls-alpn-01")) as gw:
            gw.wait_for_log(ISSUED, timeout=60)
            root = tmp_path / "pebble-root.pem"
            root.write_bytes(pebble.issuer_root())
            with connect(gw, PUBLIC, root) as old:
                first = served_certificate(old)
                assert get(old, PUBLIC) == 200
                assert gw.process.wait_for_line(ISSUED, timeout=60) is not None
                with connect(gw, PUBLIC, root) as new:
                    renewed = served_certificate(new)
                    assert get(new, PUBLIC) == 200
                assert renewed.serial_number != first.serial_number
                assert renewed.not_valid_after_utc > first.not_valid_after_utc
                assert get(old, PUBLIC) == 200  # the open connection was not dropped


def test_unreachable_directory_is_logged_and_local_names_are_served(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    closed = free_port()
    settings = {"directory": f"https://127.0.0.1:{closed}/dir", "challenge": "http-01"}
    with acme_gateway(tmp_path, free_ports(), upstream, settings) as gw:
        with connect(gw, "localhost", gw.ca_pem) as tls:
            assert get(tls, "localhost") == 200
        line = gw.wait_for_log(f"ACME certificate for {PUBLIC} failed", timeout=30)
        assert "next attempt in 0:05:00" in line
        # Until then the public name is served with the local leaf (which covers every name).
        with connect(gw, PUBLIC, gw.ca_pem) as tls:
            assert get(tls, PUBLIC) == 200


def test_a_hanging_ca_does_not_hold_up_a_graceful_stop(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    """A directory that accepts connections and never answers: the order hangs in its thread,
    yet SIGTERM stops the gateway at once."""
    with socket.create_server(("127.0.0.1", 0)) as black_hole:  # never accepts, never answers
        port = black_hole.getsockname()[1]
        settings = {"directory": f"https://127.0.0.1:{port}/dir", "challenge": "http-01"}
        with acme_gateway(tmp_path, free_ports(), upstream, settings) as gw:
            gw.wait_for_log("ACME (https://127.0.0.1:")
            with connect(gw, "localhost", gw.ca_pem) as tls:
                assert get(tls, "localhost") == 200
            started = time.monotonic()
            assert gw.process.stop(timeout=8) == 0, gw.process.output()
            assert time.monotonic() - started < 8
            assert not gw.log_lines("ACME certificate for")  # the order was still hanging


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_worker_processes_order_once_and_all_serve_it(
    tmp_path: Path, upstream: EchoUpstream, challenge: str
) -> None:
    """With 3 worker processes on one listener, whichever accepts Pebble's validation answers
    it; one process orders, and every process then serves the certificate."""
    ports = free_ports()
    with pebble_server(tmp_path / "pebble", http_port=ports[0], tls_port=ports[1]) as pebble:
        settings = acme_settings(pebble, challenge)
        with acme_gateway(tmp_path, ports, upstream, settings, workers=3) as gw:
            gw.wait_for_log(ISSUED, timeout=60)
            root = tmp_path / "pebble-root.pem"
            root.write_bytes(pebble.issuer_root())
            serials: list[int] = []
            deadline = time.monotonic() + 20
            # New connections land on any worker; 30 verifying handshakes in a row must all
            # get the ACME certificate (each worker picks it up from the store).
            while len(serials) < 30:
                assert time.monotonic() < deadline, "some worker still serves the local leaf"
                try:
                    with connect(gw, PUBLIC, root) as tls:
                        serials.append(served_certificate(tls).serial_number)
                except ssl.SSLCertVerificationError:
                    serials.clear()
                    time.sleep(0.2)  # a worker has not loaded it yet
            assert len(set(serials)) == 1
            assert len(gw.log_lines(ISSUED)) == 1
            assert not gw.log_lines("failed")
