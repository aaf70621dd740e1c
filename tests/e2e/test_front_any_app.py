"""Fronting any app: host rules, redirect routes, https:// upstreams, "ready" that means
ready, and the ``pygateway`` command (``proxy``, ``check``, start-up failures)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from e2e.harness import (
    PYTHON,
    REPO,
    START_TIMEOUT,
    EchoUpstream,
    ManagedProcess,
    StackConfig,
    echo_upstream,
    free_port,
    gateway,
    read_response,
    stack,
)
from gateway.tls.certs import CertificateAuthority

pytestmark = pytest.mark.e2e

HOSTNAMES = ["localhost", "app.localhost", "api.localhost", "*.apps.localhost"]


def host_rules(upstreams: dict[str, EchoUpstream]) -> StackConfig:
    a, b, c = (upstreams[name].url for name in "abc")
    return StackConfig(
        pools={"main": [a], "app": [b], "api": [c]},
        routes=[
            {"path_prefix": "/", "upstream": "main"},
            {"path_prefix": "/", "upstream": "app", "hosts": ["app.localhost"]},
            {"path_prefix": "/", "upstream": "api", "hosts": ["*.apps.localhost"]},
            {
                "path_prefix": "/v1",
                "upstream": "api",
                "hosts": ["api.localhost"],
                "strip_prefix": True,
            },
            {
                "path_prefix": "/old",
                "redirect": "https://example.org/new",
                "strip_prefix": True,
            },
        ],
        gateway={"hostnames": HOSTNAMES},
    )


def test_routes_by_host_then_path(tmp_path: Path) -> None:
    """Exact host, then wildcard, then host-less routes; each with the longest prefix; the
    certificate covers every name, and with only *.localhost names there is no HSTS."""
    with stack(tmp_path, ["a", "b", "c"], host_rules) as s, s.gateway.client() as client:
        port = s.gateway.https_port

        def server_for(host: str, path: str) -> tuple[str, str]:
            response = client.get(path, headers={"host": f"{host}:{port}"})
            assert response.status_code == 200, response.text
            assert "strict-transport-security" not in response.headers
            echo = response.json()
            return echo["server"], echo["target"]

        assert server_for("localhost", "/echo") == ("a", "/echo")
        assert server_for("app.localhost", "/echo") == ("b", "/echo")
        assert server_for("x.apps.localhost", "/echo") == ("c", "/echo")
        assert server_for("api.localhost", "/v1/echo?q=1") == ("c", "/echo?q=1")
        assert server_for("api.localhost", "/echo/x") == ("a", "/echo/x")  # falls through
        # A name the gateway does not serve: 421, never another host's route.
        assert client.get("/", headers={"host": "a.b.apps.localhost"}).status_code == 421

        context = ssl.create_default_context(cafile=str(s.gateway.ca_pem))
        for name in ("app.localhost", "api.localhost", "x.apps.localhost"):
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=name) as tls,
            ):
                assert tls.version() in ("TLSv1.2", "TLSv1.3")  # the name verified


def test_each_request_on_one_connection_routes_by_its_own_host(tmp_path: Path) -> None:
    with stack(tmp_path, ["a", "b", "c"], host_rules) as s, s.gateway.tls_socket() as sock:
        seen = []
        for host in ("app.localhost", "localhost", "x.apps.localhost", "app.localhost"):
            sock.sendall(f"GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            status, headers, body = read_response(sock)
            assert status == 200 and "close" not in headers.get("connection", [])
            seen.append(httpx.Response(200, content=body).json()["server"])
        assert seen == ["b", "a", "c", "b"]


def test_redirect_route_keeps_path_and_query(tmp_path: Path) -> None:
    with stack(tmp_path, ["a", "b", "c"], host_rules) as s, s.gateway.client() as client:
        response = client.get("/old/page?x=1&y=%20")
        assert response.status_code == 308
        assert response.headers["location"] == "https://example.org/new/page?x=1&y=%20"
        assert client.post("/old", content=b"x").status_code == 308
        assert "1.1 gateway" in response.headers["via"]


@pytest.fixture
def private_ca(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA no system store knows, and a certificate from it for 127.0.0.1 and localhost."""
    ca = CertificateAuthority.create()
    leaf = ca.issue_leaf(["localhost", "127.0.0.1"])
    paths = tmp_path / "up-cert.pem", tmp_path / "up-key.pem", tmp_path / "up-ca.pem"
    for path, data in zip(paths, (leaf.cert_pem(), leaf.key_pem(), ca.cert_pem()), strict=True):
        path.write_bytes(data)
    return paths


def test_https_upstreams_are_verified(tmp_path: Path, private_ca: tuple[Path, Path, Path]) -> None:
    """System trust store by default (our private CA is not in it: 502 that says why), the
    pool's tls_ca_file when given, and the loudly named opt-out."""
    with echo_upstream("s", tls=private_ca) as up:
        config = StackConfig(
            pools={"strict": [up.url], "private": [up.url], "insecure": [up.url]},
            routes=[
                {"path_prefix": "/strict", "upstream": "strict"},
                {"path_prefix": "/private", "upstream": "private", "strip_prefix": True},
                {"path_prefix": "/insecure", "upstream": "insecure", "strip_prefix": True},
            ],
            pool_options={
                "strict": {"health_path": "/health", "max_retries": 0},
                "private": {"tls_ca_file": str(private_ca[2])},
                "insecure": {"tls_insecure_skip_verify": True},
            },
        )
        with gateway(tmp_path / "gw", config) as gw, gw.client() as client:
            refused = client.get("/strict/echo")
            assert refused.status_code == 502
            assert "not trusted" in refused.json()["message"]
            assert "tls_ca_file" in refused.json()["message"]
            echo = client.get("/private/echo").json()
            assert echo["server"] == "s" and echo["target"] == "/echo"
            assert client.get("/insecure/echo").json()["server"] == "s"
            assert gw.wait_for_log("tls_insecure_skip_verify = true")


def test_requests_are_held_until_the_upstream_passes_its_first_check(tmp_path: Path) -> None:
    """Started before its upstream, the gateway holds a request instead of answering 502/503,
    and says "ready" only once the upstream is healthy."""
    port = free_port()
    config = StackConfig(
        pools={"late": [f"http://127.0.0.1:{port}"]},
        routes=[{"path_prefix": "/", "upstream": "late"}],
        gateway={"ready_timeout": 20.0},
    )
    directory = tmp_path / "gw"
    directory.mkdir()
    https_port, http_port = free_port(), free_port()
    config_path = directory / "config.toml"
    config_path.write_text(config.render(directory, http_port, https_port))
    process = ManagedProcess([PYTHON, "-m", "gateway", "run", "--config", str(config_path)])
    try:
        assert process.wait_for_line("issued certificate", START_TIMEOUT), process.output()
        results: list[int] = []
        context = ssl.create_default_context(cafile=str(directory / "certs" / "ca.pem"))

        def early_request() -> None:
            with httpx.Client(verify=context, timeout=30, trust_env=False) as client:
                results.append(client.get(f"https://localhost:{https_port}/echo").status_code)

        thread = threading.Thread(target=early_request)
        thread.start()
        thread.join(1.0)  # bounded: the request must still be held, not answered
        assert results == [] and "gateway ready" not in process.output()
        upstream = ManagedProcess(
            [PYTHON, str(REPO / "tests/support/echo_upstream.py"), "--port", str(port)],
            env={"ECHO_NAME": "late"},
        )
        try:
            thread.join(30)
            assert results == [200], process.output()
            assert process.wait_for_line("gateway ready", 10), process.output()
            assert "local CA:" in process.output() and "pygateway trust" in process.output()
        finally:
            upstream.stop()
    finally:
        process.stop()


def test_pygateway_proxy_fronts_an_app_with_no_config(tmp_path: Path) -> None:
    """``pygateway proxy --from localhost:PORT --to URL``: HTTPS with a per-user CA (one root
    for every project), the redirect port, and the URL and CA path printed."""
    https_port, http_port = free_port(), free_port()
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    with echo_upstream("app") as app:
        process = ManagedProcess(
            [
                PYTHON,
                "-m",
                "gateway",
                "proxy",
                "--from",
                f"localhost:{https_port}",
                "--to",
                app.url,
                "--http-port",
                str(http_port),
            ],
            env=env,
        )
        try:
            assert process.wait_for_line("gateway ready", START_TIMEOUT), process.output()
            ca = tmp_path / "data" / "pygateway" / "ca.pem"
            assert str(ca) in process.output()
            assert f"https://localhost:{https_port}/" in process.output()
            context = ssl.create_default_context(cafile=str(ca))
            with httpx.Client(verify=context, trust_env=False, timeout=10) as client:
                echo = client.get(f"https://localhost:{https_port}/echo/path?q=1").json()
                assert (echo["server"], echo["target"]) == ("app", "/echo/path?q=1")
                redirect = client.get(f"http://localhost:{http_port}/x")
                assert redirect.status_code == 308
                assert redirect.headers["location"] == f"https://localhost:{https_port}/x"
        finally:
            process.stop()


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "gateway", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def write_config(path: Path, https_port: int, http_port: int, extra: str = "") -> Path:
    path.write_text(
        f"[gateway]\nhttps_port = {https_port}\nhttp_port = {http_port}\n"
        f'[tls]\ndir = "certs"\n{extra}'
        '[upstreams.app]\nservers = ["http://127.0.0.1:9"]\n'
        '[[routes]]\npath_prefix = "/"\nupstream = "app"\n'
    )
    return path


def test_check_loads_certificate_files_and_reports_busy_ports(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    config = write_config(
        tmp_path / "bad-cert.toml",
        free_port(),
        free_port(),
        f'cert_file = "{garbage}"\nkey_file = "{garbage}"\n',
    )
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 1, result
    assert "[tls]" in result.stderr and str(garbage) in result.stderr

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        config = write_config(tmp_path / "busy.toml", port, free_port())
        result = run_cli("check", "--config", str(config))
        assert result.returncode == 1, result
        assert f"[gateway] https_port = {port}" in result.stderr
        assert "already in use" in result.stderr

    config = write_config(tmp_path / "ok.toml", free_port(), free_port())
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_a_busy_port_at_start_up_is_one_clear_line(tmp_path: Path, workers: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        config = write_config(tmp_path / "busy.toml", free_port(), port)
        config.write_text(config.read_text().replace("[tls]", f"workers = {workers}\n[tls]"))
        result = run_cli("run", "--config", str(config))
    assert result.returncode == 1, result
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr
    assert f"[gateway] http_port = {port}" in errors[0]
    assert "is another gateway running?" in errors[0]
    assert "Traceback" not in result.stderr
