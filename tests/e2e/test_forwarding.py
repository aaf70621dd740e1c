"""Requests forwarded to the echo upstreams: balancing, routing, header rewriting, framing,
and the access log."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness import Gateway, Stack, one_pool, stack

pytestmark = pytest.mark.e2e


def seen_headers(echo: dict[str, Any]) -> dict[str, list[str]]:
    """The request headers the echo upstream received, as name -> values."""
    headers: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        headers.setdefault(name, []).append(value)
    return headers


def framing_headers(response: httpx.Response) -> list[str]:
    return response.headers.get_list("content-length") + response.headers.get_list(
        "transfer-encoding"
    )


@pytest.mark.parametrize(("prefix", "servers", "requests"), [("", "ab", 100), ("/trio", "abc", 99)])
def test_round_robin_spreads_requests_evenly(
    client: httpx.Client, prefix: str, servers: str, requests: int
) -> None:
    """Over N sequential requests each of k servers gets N/k +- 1."""
    counts = Counter(client.get(f"{prefix}/echo").json()["server"] for _ in range(requests))
    assert set(counts) == set(servers)
    share = requests // len(servers)
    assert all(abs(n - share) <= 1 for n in counts.values()), counts


def test_longest_prefix_route_wins_and_prefix_is_stripped(client: httpx.Client) -> None:
    """/solo/... goes to the solo pool (server c) with the prefix removed, query kept; a path
    that only shares the letters (/solox) falls back to the / route."""
    echo = client.get("/solo/echo/x?q=1&r=%20").json()
    assert (echo["server"], echo["target"]) == ("c", "/echo/x?q=1&r=%20")
    echo = client.get("/soloist").json()
    assert echo["server"] in ("a", "b")


def test_forwarding_headers_are_set_by_the_gateway(gw: Gateway, client: httpx.Client) -> None:
    """The upstream sees the client's address and the original Host and scheme; client-sent
    copies of the forwarding headers are replaced, not trusted."""
    response = client.get(
        "/echo",
        headers={
            "x-forwarded-for": "1.2.3.4",
            "x-real-ip": "1.2.3.4",
            "x-forwarded-proto": "http",
            "x-forwarded-host": "evil.example",
            "forwarded": "for=1.2.3.4",
        },
    )
    headers = seen_headers(response.json())
    host = f"localhost:{gw.https_port}"
    assert headers["host"] == [host]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-real-ip"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["https"]
    assert headers["x-forwarded-host"] == [host]
    assert "forwarded" not in headers
    assert len(headers["via"]) == 1 and "gateway" in headers["via"][0]


def test_via_is_appended_to_a_client_sent_via(client: httpx.Client) -> None:
    """An incoming Via is kept and the gateway adds itself at the end (RFC 9110 §7.6.3)."""
    headers = seen_headers(client.get("/echo", headers={"via": "1.0 corp-proxy"}).json())
    (via,) = headers["via"]
    assert via.startswith("1.0 corp-proxy, ") and via.endswith("gateway")


def test_hop_by_hop_request_headers_do_not_reach_the_upstream(client: httpx.Client) -> None:
    """Connection, the headers it names, Keep-Alive, TE, Upgrade and Proxy-Connection stop at
    the gateway; an ordinary header next to them goes through."""
    response = client.get(
        "/echo",
        headers={
            "connection": "x-custom",
            "x-custom": "1",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "upgrade": "foo",
            "proxy-connection": "keep-alive",
            "x-end-to-end": "kept",
        },
    )
    headers = seen_headers(response.json())
    for name in ("connection", "x-custom", "keep-alive", "te", "upgrade", "proxy-connection"):
        assert name not in headers, name
    assert headers["x-end-to-end"] == ["kept"]


def test_hop_by_hop_response_headers_do_not_reach_the_client(client: httpx.Client) -> None:
    """The upstream's Connection: x-hop, X-Hop and Keep-Alive are dropped; X-Kept is not."""
    response = client.get("/hop")
    assert response.status_code == 200
    assert "x-hop" not in response.headers
    assert "keep-alive" not in response.headers
    assert "x-hop" not in response.headers.get("connection", "")
    assert response.headers["x-kept"] == "yes"


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/echo", "content-length"),
        ("GET", "/bytes?n=100000", "transfer-encoding"),
        ("HEAD", "/echo", "content-length"),
    ],
)
def test_response_has_exactly_one_framing_header(
    client: httpx.Client, method: str, path: str, expected: str
) -> None:
    """Content-Length responses keep it, streamed ones are chunked, never both."""
    response = client.request(method, path)
    assert response.status_code == 200
    assert framing_headers(response) == [response.headers[expected]]
    if path.startswith("/bytes"):
        assert len(response.content) == 100000


def test_request_body_reaches_the_upstream(client: httpx.Client) -> None:
    """A POST body with Content-Length arrives whole, with its method."""
    echo = client.post("/echo", content=b"z" * 12345).json()
    assert (echo["method"], echo["body_bytes"]) == ("POST", 12345)
    assert seen_headers(echo)["content-length"] == ["12345"]


def test_chunked_request_body_is_buffered_and_forwarded_with_its_length(
    client: httpx.Client,
) -> None:
    """Issue 13: a body of unknown length (a generator) is read whole before the upstream is
    contacted (request buffering, like Nginx), so it arrives with a Content-Length."""
    echo = client.post("/echo", content=iter([b"a" * 1000, b"b" * 2000])).json()
    assert echo["body_bytes"] == 3000
    headers = seen_headers(echo)
    assert headers["content-length"] == ["3000"]
    assert "transfer-encoding" not in headers


def test_chunked_request_body_is_forwarded_chunked_without_buffering(
    client: httpx.Client,
) -> None:
    """On a route with request_buffering = false the body streams through, still chunked."""
    echo = client.post("/streamed/echo", content=iter([b"a" * 1000, b"b" * 2000])).json()
    assert echo["body_bytes"] == 3000
    headers = seen_headers(echo)
    assert headers["transfer-encoding"] == ["chunked"]
    assert "content-length" not in headers


def test_no_hsts_while_only_loopback_names_are_served(client: httpx.Client) -> None:
    """HSTS is pinned per host name by browsers, so it is not sent for localhost."""
    response = client.get("/echo")
    assert "strict-transport-security" not in response.headers
    assert response.headers["via"].endswith("gateway")


def test_upstream_status_is_passed_through(client: httpx.Client) -> None:
    """An upstream 404 or 500 reaches the client unchanged (not turned into a 502)."""
    assert client.get("/status/404").status_code == 404
    assert client.get("/status/500").status_code == 500


def test_access_log_has_one_line_per_request(shared: Stack, client: httpx.Client) -> None:
    """Each request is logged once with client, method, path, status, bytes, upstream and
    duration."""
    path = f"/echo/{uuid.uuid4().hex}"
    response = client.get(path)
    line = shared.gateway.wait_for_log(path)
    upstreams = {f"127.0.0.1:{u.port}": name for name, u in shared.upstreams.items()}
    match = re.search(
        r'(?P<client>\S+) "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.1" (?P<status>\d{3}) '
        r"(?P<bytes>\d+) upstream=(?P<upstream>\S+) .*rt=(?P<rt>\d+\.\d+)",
        line,
    )
    assert match, line
    assert match["client"] == "127.0.0.1"
    assert (match["method"], match["path"], match["status"]) == ("GET", path, "200")
    assert int(match["bytes"]) == len(response.content)
    assert upstreams[match["upstream"]] == response.json()["server"]
    assert float(match["rt"]) < 5
    assert len(shared.gateway.log_lines(path)) == 1


def test_hsts_is_sent_on_every_https_response_when_configured(tmp_path: Path) -> None:
    """With ``hsts_max_age`` set, proxied answers and the gateway's own errors carry it."""

    build = one_pool(path_prefix="/echo", gateway={"hsts_max_age": 600})

    with stack(tmp_path, ["a"], build) as s, s.gateway.client() as client:
        proxied = client.get("/echo")
        unrouted = client.get("/nowhere")
        assert proxied.headers["strict-transport-security"] == "max-age=600"
        assert unrouted.status_code == 404
        assert unrouted.headers["strict-transport-security"] == "max-age=600"
