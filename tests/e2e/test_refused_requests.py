"""Requests a proxy must refuse, sent as raw bytes over TLS: ambiguous framing (request
smuggling), hosts we do not serve, tunnels and dot segments.

Some of these are refused by the HTTP parser of the listener before the proxy sees them; what
matters is the answer (400) and that the connection is closed afterwards, since after a
framing problem nobody can know where the next request would start.
"""

from __future__ import annotations

import json

import pytest

from e2e.harness import Gateway, Stack, is_closed, read_response

pytestmark = pytest.mark.e2e


def exchange(gw: Gateway, request: bytes) -> tuple[int, dict[str, list[str]], bytes, bool]:
    """Send ``request`` on a new TLS connection: status, headers, body, and whether the gateway
    closed the connection after the response (only waited for after a 4xx but 421, and a 501)."""
    with gw.tls_socket() as tls:
        tls.sendall(request)
        status, headers, body = read_response(tls)
        closed = (400 <= status < 500 or status == 501) and status != 421 and is_closed(tls)
        return status, headers, body, closed


def req(first_line: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [first_line, *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


HOST = "Host: localhost"

REFUSED = {
    "content-length-and-chunked": req(
        "POST /echo HTTP/1.1",
        HOST,
        "Content-Length: 5",
        "Transfer-Encoding: chunked",
        body=b"0\r\n\r\n",
    ),
    "two-different-content-lengths": req(
        "POST /echo HTTP/1.1", HOST, "Content-Length: 5", "Content-Length: 6", body=b"hello!"
    ),
    "repeated-identical-content-length": req(
        "POST /echo HTTP/1.1", HOST, "Content-Length: 5", "Content-Length: 5", body=b"hello"
    ),
    "gzip-then-chunked": req(
        "POST /echo HTTP/1.1", HOST, "Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"
    ),
    "chunked-twice": req(
        "POST /echo HTTP/1.1",
        HOST,
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: chunked",
        body=b"0\r\n\r\n",
    ),
    "two-hosts": req("GET /echo HTTP/1.1", HOST, "Host: evil.example"),
    "missing-host": req("GET /echo HTTP/1.1", "Accept: */*"),
    "absolute-form-foreign-host": req("GET http://evil.example/echo HTTP/1.1", HOST),
    "connect": req("CONNECT evil.example:443 HTTP/1.1", "Host: evil.example:443"),
    "dot-dot-segment": req("GET /echo/../status/200 HTTP/1.1", HOST),
    "encoded-dot-dot-segment": req("GET /echo/%2e%2e/status/200 HTTP/1.1", HOST),
    "dot-segment": req("GET /./echo HTTP/1.1", HOST),
}


@pytest.mark.parametrize("request_bytes", list(REFUSED.values()), ids=list(REFUSED))
def test_ambiguous_or_foreign_request_is_refused_and_closed(
    gw: Gateway, request_bytes: bytes
) -> None:
    """400, then the gateway closes the connection; CONNECT is 501 since issue 13 (a method
    a reverse proxy does not implement, rather than a malformed request)."""
    status, _, _, closed = exchange(gw, request_bytes)
    assert status == (501 if request_bytes.startswith(b"CONNECT ") else 400)
    assert closed


@pytest.mark.parametrize("name", ["two-different-content-lengths", "absolute-form-foreign-host"])
def test_refused_request_never_reaches_an_upstream(shared: Stack, name: str) -> None:
    """Nothing of a refused request is forwarded (checked on the path it names)."""
    before = {n: u.seen("/echo") for n, u in shared.upstreams.items()}
    status, _, _, _ = exchange(shared.gateway, REFUSED[name])
    assert status == 400
    assert {n: u.seen("/echo") for n, u in shared.upstreams.items()} == before


def test_error_body_is_json_with_a_message(gw: Gateway) -> None:
    """A refusal made by the proxy itself explains it in a JSON message."""
    status, headers, body, _ = exchange(gw, REFUSED["dot-dot-segment"])
    assert status == 400
    assert headers["content-type"] == ["application/json"]
    assert ".." in json.loads(body)["message"]


def test_absolute_form_for_a_served_host_is_forwarded(gw: Gateway) -> None:
    """GET https://localhost:<port>/echo is served like the origin form."""
    status, _, body, _ = exchange(
        gw,
        req(f"GET https://localhost:{gw.https_port}/echo?x=1 HTTP/1.1", HOST, "Connection: close"),
    )
    assert status == 200
    assert json.loads(body)["target"] == "/echo?x=1"


def test_host_not_served_is_misdirected(gw: Gateway) -> None:
    """A well-formed Host we do not serve gets 421 (the connection may be reused for ours)."""
    status, _, body, _ = exchange(gw, req("GET /echo HTTP/1.1", "Host: evil.example"))
    assert status == 421
    assert "evil.example" in json.loads(body)["message"]


def test_connection_stays_usable_after_421(gw: Gateway) -> None:
    """421 keeps the connection open: the next request on it, for a served host, succeeds."""
    with gw.tls_socket() as tls:
        tls.sendall(req("GET /echo HTTP/1.1", "Host: evil.example"))
        assert read_response(tls)[0] == 421
        tls.sendall(req("GET /echo HTTP/1.1", HOST))
        assert read_response(tls)[0] == 200


def test_oversized_request_head_is_refused(gw: Gateway) -> None:
    """A 2 MiB header block is refused with 431 instead of being buffered and forwarded."""
    big = "X-Big: " + "a" * (2 * 1024 * 1024)
    status, _, _, closed = exchange(gw, req("GET /echo HTTP/1.1", HOST, big))
    assert status == 431
    assert closed
