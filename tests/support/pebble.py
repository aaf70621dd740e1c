"""A real ACME server for the tests: Let's Encrypt's Pebble, with pebble-challtestsrv as its DNS.

``pebble_server(directory, http_port, tls_port)`` starts both on free loopback ports.  Every
name resolves to 127.0.0.1 (challtestsrv's default answer), and Pebble validates HTTP-01 on
``http_port`` and TLS-ALPN-01 on ``tls_port``: the gateway's two listeners.  Pebble's own HTTPS
certificate comes from a throwaway CA made here (``ca_file``); the certificates Pebble issues
chain to its own random root, fetched from its management port (``issuer_root``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from e2e.harness import ManagedProcess, free_port

from gateway.tls.certs import CertificateAuthority

START_TIMEOUT = 15.0


@dataclass
class Pebble:
    directory_url: str
    ca_file: Path
    management_port: int
    process: ManagedProcess

    def issuer_root(self) -> bytes:
        """The root Pebble signs with (random per Pebble run), as PEM."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            return bytes(response.read())


def _wait_for_port(port: int, process: ManagedProcess, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise AssertionError(f"{what} exited:\n{process.output()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)  # nothing to await: the port opens when the Go server is up
    raise AssertionError(f"{what} did not listen on {port}:\n{process.output()}")


@contextlib.contextmanager
def pebble_server(
    directory: Path, *, http_port: int, tls_port: int, validity_seconds: int | None = None
) -> Iterator[Pebble]:
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create()
    leaf = ca.issue_leaf(["localhost", "127.0.0.1"])
    ca_file = directory / "pebble-ca.pem"
    ca_file.write_bytes(ca.cert_pem())
    (directory / "pebble-cert.pem").write_bytes(leaf.cert_pem())
    (directory / "pebble-key.pem").write_bytes(leaf.key_pem())
    port, management, dns, dns_management = (free_port() for _ in range(4))
    config = {
        "listenAddress": f"127.0.0.1:{port}",
        "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(directory / "pebble-cert.pem"),
        "privateKey": str(directory / "pebble-key.pem"),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    if validity_seconds is not None:
        config["certificateValidityPeriod"] = validity_seconds
    config_file = directory / "pebble-config.json"
    config_file.write_text(json.dumps({"pebble": config}))
    with contextlib.ExitStack() as stack:
        challtestsrv = ManagedProcess(
            [
                "pebble-challtestsrv",
                "-defaultIPv4=127.0.0.1",
                "-defaultIPv6=",
                f"-dns01=127.0.0.1:{dns}",
                f"-management=127.0.0.1:{dns_management}",
                "-http01=",
                "-https01=",
                "-tlsalpn01=",
            ]
        )
        stack.callback(challtestsrv.stop)
        _wait_for_port(dns, challtestsrv, "pebble-challtestsrv")
        pebble = ManagedProcess(
            ["pebble", "-config", str(config_file), "-dnsserver", f"127.0.0.1:{dns}"],
            # No artificial validation delay, no nonce rejections, a fresh authorization per
            # order (so every order really validates).
            env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"},
        )
        stack.callback(pebble.stop)
        _wait_for_port(port, pebble, "pebble")
        yield Pebble(f"https://127.0.0.1:{port}/dir", ca_file, management, pebble)
