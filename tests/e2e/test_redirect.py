"""The plain-HTTP listener: every request for a served host is redirected to HTTPS."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e.harness import Gateway, StackConfig, gateway, is_closed, read_response

pytestmark = pytest.mark.e2e


@pytest.fixture
def plain() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=5, follow_redirects=False) as client:
        yield client


def raw_http(gw: Gateway, request: bytes) -> tuple[int, dict[str, list[str]], bool]:
    """Send raw bytes to the HTTP listener: status, headers, and whether it then closed."""
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=5) as sock:
        sock.sendall(request)
        status, headers, _ = read_response(sock)
        return status, headers, is_closed(sock)


def test_redirect_keeps_path_and_query(gw: Gateway, plain: httpx.Client) -> None:
    """GET http://localhost:<http>/a/b?x=1&y=2 -> 308 to the same path and query on the
    HTTPS port."""
    response = plain.get(f"http://localhost:{gw.http_port}/a/b?x=1&y=2")
    assert response.status_code == 308
    assert response.headers["location"] == f"https://localhost:{gw.https_port}/a/b?x=1&y=2"


def test_redirect_keeps_percent_encoding(gw: Gateway, plain: httpx.Client) -> None:
    """The Location carries the raw, still percent-encoded target."""
    response = plain.get(f"http://localhost:{gw.http_port}/a%20b/c%2Fd?q=%C3%A9")
    assert response.headers["location"] == f"https://localhost:{gw.https_port}/a%20b/c%2Fd?q=%C3%A9"


def test_post_is_redirected_with_308(gw: Gateway, plain: httpx.Client) -> None:
    """A POST gets 308 too: the status itself tells the client to repeat method and body."""
    response = plain.post(f"http://localhost:{gw.http_port}/submit", content=b"payload")
    assert response.status_code == 308
    assert response.headers["location"] == f"https://localhost:{gw.https_port}/submit"


def test_redirect_to_ipv6_literal_host(gw: Gateway) -> None:
    """A bracketed IPv6 Host is served (the certificate covers ::1) and stays bracketed."""
    status, headers, _ = raw_http(
        gw, b"GET /x HTTP/1.1\r\nHost: [::1]:%d\r\nConnection: close\r\n\r\n" % gw.http_port
    )
    assert status == 308
    assert headers["location"] == [f"https://[::1]:{gw.https_port}/x"]


def test_foreign_host_is_refused_without_location(gw: Gateway, plain: httpx.Client) -> None:
    """A Host we do not serve gets 400 and no Location (no open redirect)."""
    response = plain.get(f"http://127.0.0.1:{gw.http_port}/", headers={"host": "evil.example"})
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.json()["message"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET / HTTP/1.0\r\n\r\n", id="http10-without-host"),
        pytest.param(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", id="http11-without-host"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n", id="two-hosts"
        ),
        pytest.param(
            b"GET http://evil.example/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
            id="absolute-form-foreign-host",
        ),
        pytest.param(b"GET / HTTP/1.1\r\nHost: localhost:abc\r\n\r\n", id="bad-port"),
    ],
)
def test_request_without_one_served_host_is_refused(gw: Gateway, request_bytes: bytes) -> None:
    """Without exactly one served host there is no safe Location: 400, no Location, closed."""
    status, headers, closed = raw_http(gw, request_bytes)
    assert status == 400
    assert "location" not in headers
    assert closed


def test_redirect_status_is_configurable(tmp_path: Path, plain: httpx.Client) -> None:
    """redirect_status = 301 is what the listener answers."""
    config = StackConfig(pools={}, routes=[], gateway={"redirect_status": 301})
    with gateway(tmp_path, config) as gw:
        response = plain.get(f"http://localhost:{gw.http_port}/p?q=1")
    assert response.status_code == 301
    assert response.headers["location"] == f"https://localhost:{gw.https_port}/p?q=1"
