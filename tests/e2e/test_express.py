"""The express lane (gateway.express) against the real gateway: proxied GET/HEADs answered from
the listener's callbacks, without an ASGI task, are the full path's answers, and every exchange
the lane hands over mid-way (5xx, 1xx, a large or streamed body, a closed pooled connection, a
read timeout, a client that does not read) ends as on the full path, with the request sent
upstream once.

``gateway_express_requests_total`` (``/metrics``) counts the requests the lane answered (not
the handed-over ones), so each test proves which path answered.  The lane needs an idle pooled
connection to the chosen server: a pool's first request always takes the full path.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack
import httpx
import pytest
from hyperframe.frame import DataFrame, Frame, HeadersFrame
from support.scripted_upstream import interim, request_heads, response
from support.threaded_origin import ThreadedOrigin

from e2e.harness import (
    Admin,
    EchoUpstream,
    Gateway,
    KeepAliveRaceUpstream,
    Stack,
    StackConfig,
    TomlValue,
    free_port,
    read_response,
    sigterm_while_held,
    stack,
)

pytestmark = pytest.mark.e2e

EXPRESS = "gateway_express_requests_total"
READ_TIMEOUT = 0.5  # the scripted origin's pool
BIG = bytes(range(256)) * 4096  # 1 MiB, not all one byte
# Fields that differ between any two answers to the same request.
VOLATILE = {"date", "x-request-id"}


# --- a raw origin whose answers can pause between two parts ----------------------------------

PAUSE = None  # a step of a script: wait until the test calls ``resume(path)``
Part = bytes | None
OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]  # lowercase names (the last value of a repeated field)
    connection: int  # which accepted connection carried it (1-based)


class PacedOrigin(ThreadedOrigin):
    """A raw HTTP/1.1 origin (bodiless requests) that answers a scripted path with its parts in
    order, and at ``PAUSE`` waits until the test calls ``resume(path)``: a test can then prove
    what the gateway did with the first part alone (relayed a 103, streamed a first chunk, timed
    out).  Other paths (and /health) get a 200 "ok".  Records every request but /health."""

    def __init__(self) -> None:
        super().__init__()
        self._scripts: dict[str, tuple[Part, ...]] = {}
        self._resumed: dict[str, threading.Event] = {}
        self._seen: list[Seen] = []

    def script(self, path: str, *parts: Part) -> None:
        with self._lock:
            self._scripts[path] = parts
            self._resumed[path] = threading.Event()

    def resume(self, path: str) -> None:
        self._resumed[path].set()

    def seen(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if s.target.split("?", 1)[0] == path]

    def __exit__(self, *exc: object) -> None:
        for event in list(self._resumed.values()):
            event.set()  # no serving thread is left waiting
        super().__exit__(*exc)

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn:
            for head in request_heads(conn):
                line, *fields = head.decode("latin-1").split("\r\n")
                method, target = (line.split(" ") + ["", ""])[:2]
                headers = {}
                for field_line in fields:
                    name, _, value = field_line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                path = target.split("?", 1)[0]
                with self._lock:
                    parts = self._scripts.get(path, (OK,))
                    resumed = self._resumed.get(path)
                    if path != "/health":
                        self._seen.append(Seen(method, target, headers, number))
                try:
                    for part in parts:
                        if part is PAUSE:
                            assert resumed is not None
                            resumed.wait(30)
                        else:
                            conn.sendall(part)
                except OSError:
                    return


# --- the site: one gateway for most tests ----------------------------------------------------


class Site:
    """The stack (echo upstreams ``h`` and ``h2``), the scripted origin, the keep-alive racer
    and the admin API."""

    def __init__(
        self, s: Stack, admin_port: int, origin: PacedOrigin, racer: KeepAliveRaceUpstream
    ) -> None:
        self.stack = s
        self.gateway = s.gateway
        self.echo = s.upstreams["h"]
        self.origin = origin
        self.racer = racer
        self.admin = Admin(s, admin_port)

    def metric(self, name: str, **labels: str) -> float:
        return self.admin.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def metric_sum(self, name: str) -> float:
        return sum(v for (n, _), v in self.admin.metrics().items() if n == name)

    def express(self) -> float:
        metrics = self.admin.metrics()
        assert (EXPRESS, ()) in metrics, "no gateway_express_requests_total on /metrics"
        return metrics[(EXPRESS, ())]

    def server(self, pool: str) -> dict[str, Any]:
        """The admin API's view of ``pool``'s only (or first) server."""
        for upstream in self.admin.get("/api/upstreams"):
            if upstream["name"] == pool:
                server: dict[str, Any] = upstream["servers"][0]
                return server
        raise AssertionError(f"no pool {pool}")

    def wait_idle(self, pool: str) -> None:
        """No request in flight on ``pool`` (the lane's and the full path's counts settle)."""
        self.admin.wait_for(lambda: self.server(pool)["in_flight"] == 0, timeout=5)


def site_config(
    upstreams: dict[str, EchoUpstream],
    origin: PacedOrigin,
    racer: KeepAliveRaceUpstream,
    admin_port: int,
) -> StackConfig:
    """/plain -> h (no cache, no middleware: the lane); /same -> h with a middleware that
    changes nothing (the full path's answer to compare with); /cached -> h with the cache;
    /raw -> the scripted origin (0.5 s read timeout); /race -> the keep-alive racer; /pair ->
    h and h2.  All strip their prefix.  Active checks are rare on the raw pools."""
    h, h2 = upstreams["h"].url, upstreams["h2"].url
    rare: dict[str, TomlValue] = {"health_interval": 60.0}
    plain: dict[str, TomlValue] = {"strip_prefix": True, "cache": False}
    return StackConfig(
        pools={"main": [h], "pair": [h, h2], "raw": [origin.url], "race": [racer.url]},
        pool_options={"raw": {**rare, "read_timeout": READ_TIMEOUT}, "race": rare},
        routes=[
            {"path_prefix": "/plain", "upstream": "main", **plain},
            {"path_prefix": "/same", "upstream": "main", **plain, "middlewares": ["noop"]},
            {"path_prefix": "/cached", "upstream": "main", "strip_prefix": True},
            {"path_prefix": "/raw", "upstream": "raw", **plain},
            {"path_prefix": "/race", "upstream": "race", **plain},
            {"path_prefix": "/pair", "upstream": "pair", **plain},
        ],
        middlewares={"noop": {"type": "headers", "response_remove": ["x-never-sent"]}},
        cache={"enabled": True},
        admin={"port": admin_port},
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    admin_port = free_port()
    with contextlib.ExitStack() as exits:
        origin = exits.enter_context(PacedOrigin())
        racer = exits.enter_context(KeepAliveRaceUpstream())
        s = exits.enter_context(
            stack(
                tmp_path_factory.mktemp("express"),
                ["h", "h2"],
                lambda upstreams: site_config(upstreams, origin, racer, admin_port),
            )
        )
        lane = Site(s, admin_port, origin, racer)
        with lane.admin:
            yield lane


@pytest.fixture
def client(site: Site) -> Iterator[httpx.Client]:
    with site.gateway.client() as c:
        yield c


# --- helpers ---------------------------------------------------------------------------------


def h2_client(site: Site) -> httpx.Client:
    gw = site.gateway
    return httpx.Client(
        http2=True, verify=gw.ssl_context(), base_url=gw.base_url, trust_env=False, timeout=10.0
    )


def fields(r: httpx.Response) -> list[tuple[str, str]]:
    """The response's fields in order, the volatile ones' values blanked."""
    return [(k, "" if k in VOLATILE else v) for k, v in r.headers.multi_items()]


def echoed(r: httpx.Response) -> dict[str, Any]:
    """The echo upstream's report of the request, its X-Request-ID checked against the
    client's and then blanked (it differs per request)."""
    report: dict[str, Any] = r.json()
    ids = [v for k, v in report["headers"] if k == "x-request-id"]
    assert ids == [r.headers["x-request-id"]], (ids, r.headers)
    report["headers"] = [[k, "" if k == "x-request-id" else v] for k, v in report["headers"]]
    return report


def seen_header(report: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in report["headers"] if k == name]


def on_the_lane(site: Site, client: httpx.Client, path: str) -> None:
    """Make sure ``path``'s pool holds an idle connection the next request is started on:
    one request (which may open it), then one that must be answered on the lane."""
    assert client.get(path).status_code == 200
    before = site.express()
    assert client.get(path).status_code == 200
    assert site.express() - before == 1, f"{path} was not answered on the lane"


def recv_until(sock: ssl.SSLSocket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {data!r}"
        data += chunk
    return data


ACCESS_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/1\.1" (?P<status>\d{3}) (?P<bytes>\d+) '
    r"upstream=(?P<upstream>\S+) cache=(?P<cache>\S+) rt=(?P<rt>\d+\.\d{3}) "
    r"id=(?P<id>[0-9a-f]{32})(?P<aborted> aborted)?$"
)


def access_line(gw: Gateway, request_id: str) -> dict[str, str]:
    """The one access-log line of the request with this X-Request-ID, parsed."""
    gw.wait_for_log(f"id={request_id}")
    lines = gw.log_lines(f"id={request_id}")
    assert len(lines) == 1, lines
    match = ACCESS_LINE.search(lines[0])
    assert match, lines[0]
    return match.groupdict()


# --- answered on the lane --------------------------------------------------------------------


def test_plain_gets_are_answered_on_the_lane_as_the_full_path_answers(
    site: Site, client: httpx.Client
) -> None:
    """A cache=false route without middlewares: the lane's answer equals the full path's (the
    same request on a route whose only middleware changes nothing) field for field, and the
    upstream saw the same request: Host, X-Forwarded-*, Via, the client's X-Request-ID."""
    target = "/echo/compare?q=1&r=%20"
    requests_before = site.metric_sum("gateway_requests_total")
    before = site.express()
    full = client.get(f"/same{target}")
    assert site.express() == before  # a middleware: the full path
    lane = [client.get(f"/plain{target}") for _ in range(3)]
    assert site.express() - before == 3
    assert site.metric_sum("gateway_requests_total") - requests_before == 4
    for answer in lane:
        assert answer.status_code == full.status_code == 200
        assert fields(answer) == fields(full)
        assert answer.headers["via"] == "1.1 gateway"
        assert answer.content != full.content  # the X-Request-IDs differ ...
        assert echoed(answer) == echoed(full)  # ... and nothing else
    report = echoed(lane[0])
    assert report["target"] == target and report["method"] == "GET"
    host = f"localhost:{site.gateway.https_port}"
    assert seen_header(report, "host") == seen_header(report, "x-forwarded-host") == [host]
    assert seen_header(report, "x-forwarded-for") == ["127.0.0.1"]
    assert seen_header(report, "x-forwarded-proto") == ["https"]
    assert len(seen_header(report, "via")) == 1
    assert len({r.headers["x-request-id"] for r in [*lane, full]}) == 4


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
def test_hit_for_pass_gets_are_answered_on_the_lane_with_the_cache_headers(
    site: Site, http2: bool
) -> None:
    """On a caching route, a response without freshness information makes its key
    hit-for-pass; once the full path has passed it, plain GETs of it take the lane, with the
    full path's Cache-Status and X-Cache, and still count as cache misses."""
    with h2_client(site) if http2 else site.gateway.client() as client:
        hit_for_pass_on_the_lane(site, client, f"/cached/echo/pass-{http2}")


def hit_for_pass_on_the_lane(site: Site, client: httpx.Client, path: str) -> None:
    misses = site.metric("gateway_cache_requests_total", result="miss")
    before = site.express()
    fetched = client.get(path)  # a miss: fetched, not storable (hit-for-pass from now on)
    passed = client.get(path)  # passed by the full path, which remembers the decision
    assert site.express() == before
    lane = [client.get(path) for _ in range(3)]
    assert site.express() - before == 3
    assert site.metric("gateway_cache_requests_total", result="miss") - misses == 5
    assert passed.headers["x-cache"] == "MISS"
    assert passed.headers["cache-status"].startswith("gateway; fwd=")
    for answer in [fetched, *lane]:
        assert answer.status_code == 200
        assert fields(answer) == fields(passed)
        assert echoed(answer) == echoed(passed)


def test_a_store_change_sends_a_passed_key_back_to_the_full_path_once(
    site: Site, client: httpx.Client
) -> None:
    """The lane passes a key only while the store is unchanged since the full path passed
    it: after another response is stored, the full path answers once, then the lane again."""
    path = "/cached/echo/generation"
    for _ in range(3):
        assert client.get(path).status_code == 200
    before = site.express()
    assert client.get(path).headers["x-cache"] == "MISS"
    assert site.express() - before == 1
    stored = client.get("/cached/cache/generation", params={"cc": "max-age=60"})
    assert "stored" in stored.headers["cache-status"]
    before = site.express()
    after = client.get(path)
    assert after.status_code == 200 and after.headers["x-cache"] == "MISS"
    assert site.express() == before  # the full path, which remembers the new generation
    assert client.get(path).headers["x-cache"] == "MISS"
    assert site.express() - before == 1


def test_head_on_the_lane_is_the_gets_head_without_a_body(site: Site) -> None:
    """HEAD on a cache=false route: the GET's head (Content-Length included), no body (the
    GET that follows on the same connection is intact), as the full path answers it."""
    target = b"/json?n=300"
    heads = {}
    with site.gateway.tls_socket() as sock:

        def ask(method: bytes, prefix: bytes) -> tuple[int, dict[str, list[str]], bytes]:
            sock.sendall(b"%s %s%s HTTP/1.1\r\nHost: localhost\r\n\r\n" % (method, prefix, target))
            return read_response(sock, head_only=method == b"HEAD")

        get = ask(b"GET", b"/plain")  # the pool has an idle connection from here on
        before = site.express()
        for prefix in (b"/plain", b"/same"):
            heads[prefix] = ask(b"HEAD", prefix)
        again = ask(b"GET", b"/plain")
        assert site.express() - before == 2  # HEAD and GET on /plain
    assert again[0] == 200 and again[2] == get[2] and len(get[2]) == 300

    def head_fields(answer: tuple[int, dict[str, list[str]], bytes]) -> dict[str, list[str]]:
        return {k: v for k, v in answer[1].items() if k not in VOLATILE}

    for head in heads.values():
        assert head[0] == 200 and head[2] == b""
        assert head_fields(head) == head_fields(get)
        assert head[1]["content-length"] == ["300"]


def test_connection_close_on_the_lane_is_answered_then_closed(site: Site) -> None:
    """``Connection: close``: the lane's answer says ``connection: close`` and the connection
    closes after it, exactly as on the full path."""
    with site.gateway.client() as c:
        on_the_lane(site, c, "/plain/json?n=50")
    answers = {}
    for prefix in ("/plain", "/same", "/plain"):
        before = site.express()
        with site.gateway.tls_socket() as sock:
            sock.sendall(
                f"GET {prefix}/json?n=50 HTTP/1.1\r\nHost: localhost\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            status, headers, body = read_response(sock)
            assert sock.recv(1) == b""  # closed after the response
        answers[prefix] = (status, {k: v for k, v in headers.items() if k not in VOLATILE}, body)
        assert site.express() - before == (1 if prefix == "/plain" else 0)
    assert answers["/plain"] == answers["/same"]
    assert answers["/plain"][1]["connection"] == ["close"]


def test_access_log_lines_of_lane_requests_have_the_full_paths_shape(
    site: Site, client: httpx.Client
) -> None:
    """One line per request, as the full path writes it: status, bytes, the upstream's
    address, the cache field and the X-Request-ID."""
    full = client.get("/same/echo/logged")
    before = site.express()
    lane = client.get("/plain/echo/logged")
    client.get("/cached/echo/logged")  # fetched: not storable, hit-for-pass from now on
    passed = client.get("/cached/echo/logged")  # passed by the full path
    lane_cached = client.get("/cached/echo/logged")
    assert site.express() - before == 2  # /plain and the last /cached one
    address = f"127.0.0.1:{site.echo.port}"
    lines: dict[str, dict[str, str]] = {}
    for name, answer in [
        ("full", full),
        ("lane", lane),
        ("passed", passed),
        ("lane_cached", lane_cached),
    ]:
        line = access_line(site.gateway, answer.headers["x-request-id"])
        assert line["status"] == "200" and line["upstream"] == address
        assert int(line["bytes"]) == len(answer.content)
        assert line["aborted"] is None and float(line["rt"]) < 5
        lines[name] = line
    assert lines["full"]["cache"] == lines["lane"]["cache"] == "-"
    assert lines["lane_cached"]["cache"] == lines["passed"]["cache"] == "MISS"
    assert (lines["lane"]["method"], lines["lane"]["target"]) == ("GET", "/plain/echo/logged")


# --- handed over to the full path ------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503])
def test_an_upstream_5xx_is_handed_over_relayed_and_reported(
    site: Site, client: httpx.Client, status: int
) -> None:
    """The lane leaves a 5xx to the full path: relayed as is (a lone server, no retry), the
    server's passive health hears the failure, one request upstream, one log line."""
    path = f"/fail{status}"
    site.origin.script(path, response(status, [("retry-after", "7")], b"failing on purpose"))
    on_the_lane(site, client, "/raw/ok")
    before = site.express()
    codes = site.metric_sum("gateway_requests_total")
    answer = client.get(f"/raw{path}")
    assert answer.status_code == status and answer.content == b"failing on purpose"
    assert answer.headers["retry-after"] == "7"
    assert site.express() == before
    assert site.metric_sum("gateway_requests_total") - codes == 1
    (seen,) = site.origin.seen(path)
    assert seen.headers["x-request-id"] == answer.headers["x-request-id"]
    server = site.server("raw")
    assert server["last_error"] == f"responded {status}" and server["state"] == "UP"
    site.wait_idle("raw")
    line = access_line(site.gateway, answer.headers["x-request-id"])
    assert line["status"] == str(status)


def test_early_hints_before_a_later_final_response_are_relayed(site: Site) -> None:
    """A 103 that arrives alone is handed over: the client gets it before the upstream has
    even sent its 200, then the 200; one request upstream."""
    hints = interim(103, [("link", "</style.css>; rel=preload")])
    site.origin.script("/hints-apart", hints, PAUSE, response(200, [], b"hinted"))
    with site.gateway.client() as c:
        on_the_lane(site, c, "/raw/ok")
    before = site.express()
    with site.gateway.tls_socket() as sock:
        sock.sendall(b"GET /raw/hints-apart HTTP/1.1\r\nHost: localhost\r\n\r\n")
        early = recv_until(sock, b"\r\n\r\n")
        assert early.startswith(b"HTTP/1.1 103 ")
        assert b"link: </style.css>; rel=preload" in early.lower()
        site.origin.resume("/hints-apart")
        status, _, body = read_response(sock)
    assert (status, body) == (200, b"hinted")
    assert site.express() == before
    assert len(site.origin.seen("/hints-apart")) == 1


def test_early_hints_arriving_with_the_final_response_are_relayed(site: Site) -> None:
    """An upstream that writes its 103 and its 200 at once (one read for the gateway): the
    client must still get the 103 first (RFC 9110 §15.2), as on the full path."""
    hints = interim(103, [("link", "</app.js>; rel=preload")])
    site.origin.script("/hints-together", hints + response(200, [], b"hinted"))
    with site.gateway.client() as c:
        on_the_lane(site, c, "/raw/ok")
    before = site.express()
    with site.gateway.tls_socket() as sock:
        sock.sendall(b"GET /raw/hints-together HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = recv_until(sock, b"hinted")
    assert len(site.origin.seen("/hints-together")) == 1
    assert data.startswith(b"HTTP/1.1 103 "), data[:80]
    assert b"\r\n\r\nHTTP/1.1 200 " in data
    assert site.express() == before


def test_a_large_body_is_handed_over_and_arrives_intact(site: Site, client: httpx.Client) -> None:
    """1 MiB with Content-Length (over the lane's 64 KiB): streamed by the full path, every
    byte right, one request upstream."""
    site.origin.script("/big", response(200, [("content-type", "application/x-big")], BIG))
    on_the_lane(site, client, "/raw/ok")
    before = site.express()
    answer = client.get("/raw/big")
    assert answer.status_code == 200 and answer.content == BIG
    assert answer.headers["content-length"] == str(len(BIG))
    assert site.express() == before
    (seen,) = site.origin.seen("/big")
    assert seen.headers["x-request-id"] == answer.headers["x-request-id"]
    site.wait_idle("raw")


def test_a_streamed_chunked_body_is_handed_over_and_streamed(site: Site) -> None:
    """A chunked body whose end the upstream sends later: the client gets the first chunk
    before the rest exists (streamed by the full path, not held by the lane)."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
    site.origin.script("/stream", head + b"5\r\nfirst\r\n", PAUSE, b"6\r\nsecond\r\n0\r\n\r\n")
    with site.gateway.client() as c:
        on_the_lane(site, c, "/raw/ok")
        before = site.express()
        with c.stream("GET", "/raw/stream") as answer:
            chunks = answer.iter_bytes()
            assert answer.status_code == 200
            assert next(chunks) == b"first"
            site.origin.resume("/stream")
            assert b"".join(chunks) == b"second"
    assert site.express() == before
    assert len(site.origin.seen("/stream")) == 1
    site.wait_idle("raw")


def test_a_complete_chunked_body_is_answered_once_and_reframed(
    site: Site, client: httpx.Client
) -> None:
    """A small chunked response that arrives whole: one answer with the body, chunked to
    the client (the lane may answer it), one request upstream."""
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    site.origin.script("/chunked", chunked)
    on_the_lane(site, client, "/raw/ok")
    answer = client.get("/raw/chunked")
    assert answer.status_code == 200 and answer.content == b"hello"
    assert answer.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in answer.headers
    assert len(site.origin.seen("/chunked")) == 1
    assert client.get("/raw/ok").content == b"ok"  # the connection is still in step


def test_a_pooled_connection_the_upstream_closes_is_reconnected_not_502(
    site: Site, client: httpx.Client
) -> None:
    """The keep-alive race on the lane's pooled connection: the upstream closes it as the
    request arrives; the full path reconnects once and the client gets 200, every time, and
    the server stays UP."""
    answered, dropped = site.racer.answered, site.racer.dropped
    before = site.express()
    statuses = [client.get("/race/x").status_code for _ in range(4)]
    assert statuses == [200] * 4
    assert site.racer.dropped - dropped >= 2  # the race happened (each reuse is dropped)
    assert site.racer.answered - answered == 4  # each request answered once
    assert site.express() == before
    assert site.metric("gateway_upstream_up", upstream="race", server=site.racer.url) == 1
    site.wait_idle("race")


def test_an_upstream_slower_than_read_timeout_gives_one_504(
    site: Site, client: httpx.Client
) -> None:
    """No byte within read_timeout: the full path's 504 (its X-Request-ID the one the
    upstream got), after about read_timeout, one request upstream; the pool works on."""
    site.origin.script("/slow", PAUSE, response(200, [], b"too late"))
    on_the_lane(site, client, "/raw/ok")
    before = site.express()
    started = time.monotonic()
    answer = client.get("/raw/slow")
    elapsed = time.monotonic() - started
    site.origin.resume("/slow")
    assert answer.status_code == 504 and "sent nothing" in answer.json()["message"]
    assert READ_TIMEOUT <= elapsed < READ_TIMEOUT + 2
    assert site.express() == before
    (seen,) = site.origin.seen("/slow")
    assert seen.headers["x-request-id"] == answer.headers["x-request-id"]
    assert "sent nothing" in site.server("raw")["last_error"]
    site.wait_idle("raw")
    assert client.get("/raw/ok").status_code == 200
    assert len(site.origin.seen("/slow")) == 1


# --- pipelining and back-pressure ------------------------------------------------------------


def open_idle_connections(site: Site, count: int) -> None:
    """``count`` requests in flight at once on the main pool: it keeps that many idle
    connections afterwards (for pipelined requests, each started while the previous one
    still holds its connection)."""

    def slow(_: int) -> int:
        with site.gateway.client() as c:
            return c.get("/plain/slow", params={"s": "0.5"}).status_code

    with ThreadPoolExecutor(count) as pool:
        assert list(pool.map(slow, range(count))) == [200] * count


def test_pipelined_gets_are_answered_in_order_on_the_lane(site: Site) -> None:
    """Four GETs in one TLS write, the second handed over (1 MiB): answers in order, bytes
    right, the others on the lane, each request upstream once."""
    site.origin.script("/big-piped", response(200, [], BIG))
    with site.gateway.client() as c:
        on_the_lane(site, c, "/raw/ok")
    open_idle_connections(site, 2)
    seen = site.echo.seen("/echo")
    requests = [
        b"GET /plain/echo?i=1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /raw/big-piped HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /plain/echo?i=3 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /plain/echo?i=4 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ]
    before = site.express()
    with site.gateway.tls_socket() as sock:
        sock.sendall(b"".join(requests))
        answers = [read_response(sock) for _ in requests]
    assert [status for status, _, _ in answers] == [200] * 4
    assert answers[1][2] == BIG
    assert [json.loads(answers[i][2])["target"] for i in (0, 2, 3)] == [
        "/echo?i=1",
        "/echo?i=3",
        "/echo?i=4",
    ]
    assert site.express() - before == 3
    assert site.echo.seen("/echo") - seen == 3
    assert len(site.origin.seen("/big-piped")) == 1


def test_a_client_that_does_not_read_gets_every_answer_once_in_order(site: Site) -> None:
    """100 pipelined GETs of a 64 000-byte body and a client that reads nothing: the gateway
    stops answering at the socket's back-pressure (the lane hands the request it was on to
    the full path, which waits for the drain) and, once the client reads, every answer
    arrives in order, each request having reached the upstream once."""
    count, size = 100, 64000
    open_idle_connections(site, 2)
    seen = site.echo.seen("/json")
    before = site.express()
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # a small window
    raw.settimeout(30)
    raw.connect(("127.0.0.1", site.gateway.https_port))
    with site.gateway.ssl_context().wrap_socket(raw, server_hostname="localhost") as sock:
        request = b"GET /plain/json?n=%d&i=%%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % size
        sock.sendall(b"".join(request % i for i in range(count)))
        stalled, last = 0, -1
        for _ in range(100):  # until the upstream stops being asked (bounded: 100 polls)
            now = site.echo.seen("/json") - seen
            stalled = stalled + 1 if now == last else 0
            if stalled == 3:
                break
            last = now
            time.sleep(0.1)
        assert 0 < last < count, f"no back-pressure: {last} of {count} answered unread"
        assert site.express() - before < last  # the one in flight was handed over
        bodies = [read_response(sock) for _ in range(count)]
    assert [status for status, _, _ in bodies] == [200] * count
    assert len({body for _, _, body in bodies}) == 1 and len(bodies[0][2]) == size
    assert site.echo.seen("/json") - seen == count
    assert site.express() - before < count


# --- not on the lane -------------------------------------------------------------------------


def test_a_route_with_a_middleware_is_never_on_the_lane(site: Site, client: httpx.Client) -> None:
    before = site.express()
    answers = [client.get("/same/json", params={"n": "10"}) for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4
    assert site.express() == before
    assert site.metric("gateway_requests_total", route="/same", upstream="main", code="200") > 0


def test_round_robin_is_kept_when_the_lane_takes_a_pool(site: Site, client: httpx.Client) -> None:
    """Over 20 sequential GETs each of a pool's two servers gets 10 +- 1, and once both have
    a pooled connection the lane answers.  (When the lane chose a server without an idle
    connection, the full path used to choose again: the round robin advanced twice per
    request and, with two servers, the second one got every request.)"""
    before = site.express()
    servers = Counter(client.get("/pair/echo").json()["server"] for _ in range(20))
    assert set(servers) == {"h", "h2"}, servers
    assert all(abs(n - 10) <= 1 for n in servers.values()), servers
    assert site.express() - before >= 16


@pytest.mark.parametrize("option", ["server_timing", "trace"])
def test_server_timing_and_trace_mode_turn_the_lane_off(tmp_path: Path, option: str) -> None:
    """Both describe the full path: with either, no request is answered on the lane."""
    admin_port = free_port()

    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        return StackConfig(
            pools={"main": [upstreams["h"].url]},
            routes=[{"path_prefix": "/", "upstream": "main", "cache": False}],
            gateway={option: True},
            admin={"port": admin_port},
        )

    with stack(tmp_path, ["h"], build) as s, Admin(s, admin_port) as admin, s.gateway.client() as c:
        answers = [c.get("/echo") for _ in range(4)]
        assert [a.status_code for a in answers] == [200] * 4
        metrics = admin.metrics()
        assert metrics[(EXPRESS, ())] == 0
        if option == "server_timing":
            assert all("upstream" in a.headers["server-timing"] for a in answers)
        else:  # each request's trace names its X-Request-ID
            s.gateway.wait_for_log(answers[-1].headers["x-request-id"])


def test_with_two_workers_lane_requests_are_counted_over_both(tmp_path: Path) -> None:
    """Each worker answers on the lane from its own pool (one upstream connection each: its
    first request opens it on the full path, the lane reuses it) and /metrics sums them."""
    admin_port = free_port()
    with PacedOrigin() as origin:

        def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
            return StackConfig(
                pools={"raw": [origin.url]},
                routes=[{"path_prefix": "/", "upstream": "raw", "cache": False}],
                gateway={"workers": 2},
                admin={"port": admin_port},
            )

        with stack(tmp_path, [], build) as s, Admin(s, admin_port) as admin:
            total = 0
            for _ in range(40):  # new connections until both workers answered (bounded)
                with s.gateway.client() as c:
                    for _ in range(3):
                        assert c.get("/ok").content == b"ok"
                        total += 1
                if len({seen.connection for seen in origin.seen("/ok")}) >= 2:
                    break
            connections = {seen.connection for seen in origin.seen("/ok")}
            assert len(connections) == 2, "one worker answered everything"
            assert len(origin.seen("/ok")) == total
            admin.wait_for(lambda: admin.metrics()[(EXPRESS, ())] == total - 2, timeout=10)


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "http2"])
def test_sigterm_lets_requests_in_flight_on_the_lane_finish(tmp_path: Path, http2: bool) -> None:
    """Requests the lane has written upstream when SIGTERM arrives (no task holds them) all
    complete with 200 once the upstream answers, then the gateway exits 0; over HTTP/2 each
    connection's stream is answered before the connection closes."""
    admin_port = free_port()
    count = 8

    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        return StackConfig(
            pools={"main": [upstreams["hold"].url]},
            routes=[{"path_prefix": "/", "upstream": "main", "cache": False}],
            admin={"port": admin_port},
        )

    def slow(_: int) -> int:
        with s.gateway.client() as c:
            return c.get("/slow", params={"s": "0.3"}).status_code

    with stack(tmp_path, ["hold"], build) as s, Admin(s, admin_port) as admin:
        # ``count`` requests at once leave that many idle pooled connections for the lane.
        with ThreadPoolExecutor(count) as pool:
            assert list(pool.map(slow, range(count))) == [200] * count
        with s.gateway.client(http2=http2) as c:
            before = admin.metrics()[(EXPRESS, ())]
            assert c.get("/echo").status_code == 200
            admin.wait_for(lambda: admin.metrics()[(EXPRESS, ())] == before + 1, timeout=5)
        upstream = s.upstreams["hold"]
        with ThreadPoolExecutor(count) as pool, contextlib.ExitStack() as exits:
            if http2:
                # httpx fails a stream in flight on any GOAWAY, even a graceful one (RFC 9113
                # §6.8 lets the streams it names finish): h2's client state machine instead.
                raw = [exits.enter_context(RawH2(s.gateway)) for _ in range(count)]
                futures = [pool.submit(c.read_through_goaway, c.open("/hold")) for c in raw]
                answers = sigterm_while_held(s, upstream, futures)
                assert [status for status, _ in answers] == ["200"] * count
                assert all(b'"held": true' in body for _, body in answers)
            else:
                clients = [exits.enter_context(s.gateway.client(timeout=20)) for _ in range(count)]
                futures = [pool.submit(c.get, "/hold") for c in clients]
                answers = sigterm_while_held(s, upstream, futures)
                assert [a.status_code for a in answers] == [200] * count
                assert all(a.headers["connection"] == "close" for a in answers)
        assert s.gateway.process.wait(timeout=15) == 0


# --- over HTTP/2 -------------------------------------------------------------------------------


H2_ACCESS_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/2" (?P<status>\d{3}) (?P<bytes>\d+) '
    r"upstream=(?P<upstream>\S+) cache=(?P<cache>\S+) rt=\d+\.\d{3} id=(?P<id>[0-9a-f]{32})$"
)


def test_http2_streams_are_answered_on_the_lane_as_the_full_path_answers(site: Site) -> None:
    """A stream that ends with its GET or HEAD headers is on the lane over HTTP/2 too: the
    full path's fields over HTTP/2, the same request upstream, one HTTP/2 access-log line."""
    target = "/echo/h2?q=1"
    with h2_client(site) as c:
        full = c.get(f"/same{target}")
        assert c.get(f"/plain{target}").status_code == 200  # the pool's connection, maybe new
        before = site.express()
        lane = [c.get(f"/plain{target}") for _ in range(3)]
        head = c.head(f"/plain{target}")
        assert site.express() - before == 4
    for answer in [full, *lane, head]:
        assert answer.http_version == "HTTP/2" and answer.status_code == 200
    for answer in lane:
        assert fields(answer) == fields(full)
        assert echoed(answer) == echoed(full)
    # The echo's body names the method: only the length differs from the GET's.
    assert head.content == b"" and int(head.headers["content-length"]) > 0
    unsized = [[f for f in fields(r) if f[0] != "content-length"] for r in (head, lane[0])]
    assert unsized[0] == unsized[1]
    site.gateway.wait_for_log(f"id={lane[0].headers['x-request-id']}")
    (line,) = site.gateway.log_lines(f"id={lane[0].headers['x-request-id']}")
    match = H2_ACCESS_LINE.search(line)
    assert match, line
    assert (match["method"], match["target"], match["status"]) == ("GET", f"/plain{target}", "200")
    assert int(match["bytes"]) == len(lane[0].content)
    assert match["upstream"] == f"127.0.0.1:{site.echo.port}"


class RawH2:
    """An HTTP/2 connection driven with h2's client state machine: the client's windows stay
    at the protocol's 65,535 bytes (httpx opens each stream's to 16 MiB), and what it reads
    is acknowledged as it is read."""

    def __init__(self, gw: Gateway) -> None:
        context = gw.ssl_context()
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", gw.https_port), timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.next_id = 1
        self.flush()

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def open(self, path: str) -> int:
        stream_id, self.next_id = self.next_id, self.next_id + 2
        headers = [(":method", "GET"), (":scheme", "https"), (":authority", "localhost")]
        self.conn.send_headers(stream_id, [*headers, (":path", path)], end_stream=True)
        self.flush()
        return stream_id

    def read(self, stream_id: int) -> bytes:
        """The body of ``stream_id``, once it has ended."""
        body = b""
        while True:
            data = self.sock.recv(65536)
            assert data, "closed"
            ended = False
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                    if event.stream_id == stream_id:
                        body += event.data
                ended |= isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id
            self.flush()
            if ended:
                return body

    def get(self, path: str) -> bytes:
        return self.read(self.open(path))

    def read_through_goaway(self, stream_id: int) -> tuple[str, bytes]:
        """(status, body) of ``stream_id`` read frame by frame: h2's client state machine
        (like httpx) refuses every frame after a GOAWAY, even a graceful one that lets the
        streams it names finish (RFC 9113 §6.8).  No WINDOW_UPDATEs: for small bodies."""
        decoder, buffer = hpack.Decoder(), b""
        status, body = "", b""
        while True:
            while len(buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
                if len(buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(buffer[9 : 9 + length]))
                buffer = buffer[9 + length :]
                if isinstance(frame, HeadersFrame):
                    fields = dict(decoder.decode(frame.data, raw=True))  # every block, in order
                    if frame.stream_id == stream_id:
                        status = fields[b":status"].decode()
                elif isinstance(frame, DataFrame) and frame.stream_id == stream_id:
                    body += frame.data
                if frame.stream_id == stream_id and "END_STREAM" in frame.flags:
                    return status, body
            data = self.sock.recv(65536)
            assert data, "closed before the stream ended"
            buffer += data


def test_http2_bodies_over_the_clients_window_are_handed_over_intact(site: Site) -> None:
    """The lane sends a body at once only within the client's flow-control window: with the
    protocol's initial 65,535 bytes, 65,000 bytes are on the lane, 65,536 (still a small
    body) are handed to the full path, which waits for the WINDOW_UPDATEs; both arrive whole."""
    with RawH2(site.gateway) as client:
        assert len(client.get("/plain/json?n=10")) == 10
        before = site.express()
        fits = client.get("/plain/json?n=65000")
        assert site.express() - before == 1
        over = client.get("/plain/json?n=65536")
        assert site.express() - before == 1
    assert len(fits) == 65000 and len(over) == 65536
    with site.gateway.client() as h1:  # the same bytes as over HTTP/1.1
        assert fits == h1.get("/plain/json?n=65000").content
        assert over == h1.get("/plain/json?n=65536").content


def test_http2_lane_answers_for_many_streams_at_once_all_arrive(site: Site) -> None:
    """h2load: 10 streams at a time on each of 2 connections, all on the lane or handed over,
    none lost or failed."""
    h2load = shutil.which("h2load")
    assert h2load, "apt-get install -y nghttp2-client"
    with h2_client(site) as c:
        assert c.get("/plain/echo/warm").status_code == 200
    before = site.express()
    done = subprocess.run(
        [h2load, "-n", "400", "-c", "2", "-m", "10", f"{site.gateway.base_url}/plain/echo/many"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "400 succeeded, 0 failed, 0 errored" in done.stdout, done.stdout
    assert "status codes: 400 2xx" in done.stdout, done.stdout
    assert site.express() - before > 200  # most: some wait for a pooled connection
    site.wait_idle("main")


def test_http2_stream_reset_while_on_the_lane_leaves_the_connection_and_pool_working(
    site: Site,
) -> None:
    """A client resets its stream while the upstream is still answering it on the lane: the
    upstream's late answer goes nowhere, the connection serves its next stream, and the
    pooled upstream connection is back in the pool."""
    site.origin.script("/slow-h2", PAUSE, OK)
    with h2_client(site) as c:
        assert c.get("/raw/ok").status_code == 200
        assert c.get("/raw/ok").status_code == 200
    with RawH2(site.gateway) as client:
        before = site.express()
        slow = client.open("/raw/slow-h2")
        site.admin.wait_for(lambda: len(site.origin.seen("/slow-h2")) == 1, timeout=5)
        client.conn.reset_stream(slow)
        client.flush()
        site.origin.resume("/slow-h2")
        site.wait_idle("raw")
        body = client.get("/raw/ok")
    assert body == b"ok"
    assert site.express() - before == 2
    assert site.server("raw")["state"] == "UP"
