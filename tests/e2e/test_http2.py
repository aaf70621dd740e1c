"""HTTP/2 through the real gateway: ALPN, httpx with ``http2=True``, curl, h2load, and the
attacks a raw h2 client can make (frames built by hand with hyperframe and hpack)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import hpack
import httpx
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from e2e.harness import Gateway, RssSampler, Stack, one_pool, stack, vm_rss

pytestmark = pytest.mark.e2e

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_BODY = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def h2s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One echo upstream ``a`` behind the gateway, cache on, a 1 s keep-alive timeout."""
    build = one_pool(
        gateway={"max_body_bytes": MAX_BODY, "keepalive_timeout": 1.0},
        cache={"enabled": True},
    )
    with stack(tmp_path_factory.mktemp("h2"), ["a"], build) as s:
        yield s


@pytest.fixture
def gw2(h2s: Stack) -> Gateway:
    return h2s.gateway


def h2_client(gw: Gateway, **kw: object) -> httpx.Client:
    return httpx.Client(
        http2=True,
        verify=gw.ssl_context(),
        base_url=gw.base_url,
        trust_env=False,
        timeout=10.0,
        **kw,  # type: ignore[arg-type]
    )


def negotiated(gw: Gateway, offer: list[str] | None) -> str | None:
    context = gw.ssl_context()
    if offer is not None:
        context.set_alpn_protocols(offer)
    with socket.create_connection(("127.0.0.1", gw.https_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.selected_alpn_protocol()


class RawH2:
    """A TLS connection speaking hand-built HTTP/2 frames, for what no polite client sends."""

    def __init__(self, gw: Gateway, sni: str = "localhost") -> None:
        context = gw.ssl_context()
        context.check_hostname = sni == "localhost"  # other names are not on the certificate
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", gw.https_port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=sni)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.encoder = hpack.Encoder()
        self.buffer = b""
        self.closed = False
        self.sock.sendall(PREFACE + SettingsFrame(0).serialize())

    def request(
        self, stream_id: int, path: str, *extra: tuple[str, str], end: bool = True
    ) -> bytes:
        frame = HeadersFrame(stream_id, flags=["END_HEADERS", *(["END_STREAM"] if end else [])])
        frame.data = self.encoder.encode(
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "localhost"),
                (":path", path),
                *extra,
            ]
        )
        return bytes(frame.serialize())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frames_until(self, done: Callable[[Frame], bool], timeout: float = 10.0) -> list[Frame]:
        """Frames read until one satisfies ``done`` (or the server closes the connection)."""
        got: list[Frame] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
                self.buffer = self.buffer[9 + length :]
                got.append(frame)
                if done(frame):
                    return got
            if self.closed:
                return got
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            except TimeoutError:
                break
            if not data:
                self.closed = True
            self.buffer += data
        return got

    def is_closed(self, timeout: float = 5.0) -> bool:
        self.frames_until(lambda f: False, timeout)
        return self.closed

    def close(self) -> None:
        self.sock.close()


def goaway(frames: list[Frame]) -> GoAwayFrame:
    found = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert found, f"no GOAWAY in {frames}"
    return found[-1]


# --- negotiation and ordinary traffic ---------------------------------------------------------


def test_alpn_offers_h2_and_http11(gw2: Gateway) -> None:
    assert negotiated(gw2, ["h2", "http/1.1"]) == "h2"
    assert negotiated(gw2, ["http/1.1"]) == "http/1.1"
    assert negotiated(gw2, None) is None  # no ALPN: HTTP/1.1 on the same port
    with h2_client(gw2) as h2c, gw2.client() as h1c:
        assert h2c.get("/echo").http_version == "HTTP/2"
        assert h1c.get("/echo").http_version == "HTTP/1.1"


def test_a_request_reaches_the_upstream_as_http11_with_one_host(h2s: Stack) -> None:
    gw = h2s.gateway
    with h2_client(gw) as client:
        response = client.get("/echo/h2-scope?q=1", headers={"x-test": "yes"})
    assert response.status_code == 200 and response.http_version == "HTTP/2"
    echoed = response.json()
    assert echoed["target"] == "/echo/h2-scope?q=1"
    names = [name for name, _ in echoed["headers"]]
    assert not any(name.startswith(":") for name in names)
    assert names.count("host") == 1
    assert dict(echoed["headers"])["host"] == f"localhost:{gw.https_port}"
    assert dict(echoed["headers"])["x-forwarded-proto"] == "https"
    assert response.headers["via"] == "1.1 gateway"
    line = gw.wait_for_log("/echo/h2-scope")
    assert '"GET /echo/h2-scope?q=1 HTTP/2" 200' in line


def test_fifty_concurrent_streams_on_one_connection(tmp_path: Path) -> None:
    with stack(tmp_path, ["a"], one_pool()) as s:
        upstream = s.upstreams["a"]

        async def scenario() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=1)
            async with httpx.AsyncClient(
                http2=True,
                verify=s.gateway.ssl_context(),
                base_url=s.gateway.base_url,
                trust_env=False,
                timeout=20.0,
                limits=limits,
            ) as client:
                held = [asyncio.create_task(client.get("/hold")) for _ in range(50)]
                deadline = time.monotonic() + 15
                while (await asyncio.to_thread(upstream.stats))["inflight"] < 50:
                    assert time.monotonic() < deadline, "the 50 streams never ran together"
                    await asyncio.sleep(0.05)
                async with httpx.AsyncClient(trust_env=False) as direct:
                    await direct.post(f"{upstream.url}/hold/release")
                return await asyncio.gather(*held)

        responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 50
    assert {r.http_version for r in responses} == {"HTTP/2"}
    assert all(r.json()["held"] for r in responses)


def test_five_mib_upload_arrives_intact(gw2: Gateway) -> None:
    body = os.urandom(5 * 1024 * 1024)
    with h2_client(gw2) as client:
        # Streamed without Content-Length too: forwarded chunked to the HTTP/1.1 upstream.
        sized = client.post("/upload", content=body)
        streamed = client.post("/upload", content=iter([body[:1000], body[1000:]]))
    for response in (sized, streamed):
        assert response.http_version == "HTTP/2"
        assert response.json()["received"] == len(body)
        assert response.json()["sha256"] == hashlib.sha256(body).hexdigest()


def test_server_sent_events_arrive_event_by_event(h2s: Stack) -> None:
    upstream = h2s.upstreams["a"]
    with h2_client(h2s.gateway) as client, client.stream("GET", "/sse") as response:
        assert response.http_version == "HTTP/2"
        chunks = response.iter_raw()
        assert next(chunks) == b"data: first\n\n"  # before the upstream has sent the rest
        httpx.post(f"{upstream.url}/sse/release", trust_env=False)
        assert b"".join(chunks) == b"data: second\n\n"


def test_a_cache_hit_over_http2(h2s: Stack) -> None:
    with h2_client(h2s.gateway) as client:
        first = client.get("/blob64k")
        second = client.get("/blob64k")
    assert first.headers["x-cache"] == "MISS" and second.headers["x-cache"] == "HIT"
    assert second.content == first.content and len(second.content) == 65536
    assert h2s.upstreams["a"].seen("/blob64k") == 1


def test_the_gateways_own_error_responses(h2s: Stack) -> None:
    with h2_client(h2s.gateway) as client:
        misdirected = client.get("/echo/foreign", headers={"host": "evil.test"})
    assert misdirected.status_code == 421 and "not served here" in misdirected.json()["message"]
    assert misdirected.http_version == "HTTP/2"
    # An announced body over max_body_bytes: 413 at once, then RST_STREAM NO_ERROR asks the
    # client to stop sending it (RFC 9113 §8.1) -- HTTP/2's "Connection: close".
    client = RawH2(h2s.gateway)
    try:
        client.send(post_head(client, 1, "/echo/too-large", MAX_BODY + 1))
        frames = client.frames_until(lambda f: isinstance(f, RstStreamFrame))
        head = [f for f in frames if isinstance(f, HeadersFrame)]
        assert head and hpack.Decoder().decode(head[0].data)[0] == (":status", "413")
        body = b"".join(f.data for f in frames if isinstance(f, DataFrame))
        assert b"max_body_bytes" in body
        assert frames[-1].error_code == ErrorCodes.NO_ERROR  # type: ignore[attr-defined]
        assert not client.is_closed(timeout=0.3)  # the connection itself goes on
    finally:
        client.close()
    assert h2s.upstreams["a"].seen("/echo/foreign") == 0
    assert h2s.upstreams["a"].seen("/echo/too-large") == 0


def test_the_421_rules_of_http11_apply_to_h2_connections(h2s: Stack) -> None:
    """A connection for "localhost" (SNI) may carry 127.0.0.1 too, its certificate covers
    both (browsers coalesce h2 connections so); one whose SNI names a host not served here
    gets 421 for every stream, and a browser then opens one for the right name."""
    gw = h2s.gateway

    def status_on(sni: str, authority: str, path: str) -> str:
        client = RawH2(gw, sni)
        try:
            frame = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
            frame.data = client.encoder.encode(
                [(":method", "GET"), (":scheme", "https"), (":authority", authority)]
                + [(":path", path)]
            )
            client.send(frame.serialize())
            frames = client.frames_until(lambda f: isinstance(f, HeadersFrame))
            head = [f for f in frames if isinstance(f, HeadersFrame)]
            return str(dict(hpack.Decoder().decode(head[0].data))[":status"])
        finally:
            client.close()

    port = gw.https_port
    assert status_on("localhost", f"127.0.0.1:{port}", "/echo/coalesced") == "200"
    assert status_on("other.test", f"localhost:{port}", "/echo/other-sni") == "421"
    assert h2s.upstreams["a"].seen("/echo/other-sni") == 0


def post_head(client: RawH2, stream_id: int, path: str, length: int) -> bytes:
    frame = HeadersFrame(stream_id, flags=["END_HEADERS"])
    frame.data = client.encoder.encode(
        [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", path),
            ("content-length", str(length)),
        ]
    )
    return bytes(frame.serialize())


def test_curl_http2(gw2: Gateway) -> None:
    result = subprocess.run(
        [
            "curl",
            "--http2",
            "-sS",
            "--cacert",
            str(gw2.ca_pem),
            "--resolve",
            f"localhost:{gw2.https_port}:127.0.0.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            f"{gw2.base_url}/echo",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout == "2 200", result.stderr


def test_h2load_without_errors(gw2: Gateway) -> None:
    url = f"https://127.0.0.1:{gw2.https_port}/echo"
    result = subprocess.run(
        ["h2load", "-n", "2000", "-c", "2", "-m", "10", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Application protocol: h2" in result.stdout, result.stdout + result.stderr
    assert "2000 succeeded, 0 failed, 0 errored, 0 timeout" in result.stdout, result.stdout
    assert "2000 2xx" in result.stdout


def test_a_browser_speaks_http2_to_the_gateway(gw2: Gateway, tmp_path: Path) -> None:
    """Headless Chromium (installed by make test's set-up) negotiates h2 and gets the page."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium is not None, "chromium is installed by .ci/install-tls-tools"
    result = subprocess.run(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",  # required when running as root
            "--disable-gpu",
            "--ignore-certificate-errors",  # trusting the CA is test_trust's subject
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            f"{gw2.base_url}/echo/from-a-browser",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert '"target": "/echo/from-a-browser"' in result.stdout, result.stderr[-500:]
    assert '"GET /echo/from-a-browser HTTP/2" 200' in gw2.wait_for_log("/echo/from-a-browser")


def test_http2_false_offers_only_http11(tmp_path: Path) -> None:
    with stack(tmp_path, ["a"], one_pool(gateway={"http2": False})) as s:
        assert negotiated(s.gateway, ["h2", "http/1.1"]) == "http/1.1"
        with h2_client(s.gateway) as client:
            assert client.get("/echo").http_version == "HTTP/1.1"


# --- malformed requests and limits -------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [("connection", "keep-alive"), ("transfer-encoding", "chunked"), ("te", "gzip")],
)
def test_connection_specific_fields_are_a_stream_error(h2s: Stack, bad: tuple[str, str]) -> None:
    client = RawH2(h2s.gateway)
    try:
        client.send(client.request(1, "/echo/malformed", bad) + client.request(3, "/echo/fine"))
        frames = client.frames_until(
            lambda f: isinstance(f, DataFrame) and f.stream_id == 3 and "END_STREAM" in f.flags
        )
        resets = [f for f in frames if isinstance(f, RstStreamFrame)]
        assert [(f.stream_id, f.error_code) for f in resets] == [(1, ErrorCodes.PROTOCOL_ERROR)]
        assert any(isinstance(f, HeadersFrame) and f.stream_id == 3 for f in frames)
    finally:
        client.close()
    assert h2s.upstreams["a"].seen("/echo/malformed") == 0


def test_max_concurrent_streams_is_advertised_and_enforced(h2s: Stack) -> None:
    client = RawH2(h2s.gateway)
    try:
        frames = client.frames_until(lambda f: isinstance(f, SettingsFrame))
        settings = frames[-1].settings  # type: ignore[attr-defined]
        assert settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 100
        assert settings[SettingCodes.MAX_HEADER_LIST_SIZE] == 64 * 1024
        # 101 requests kept open (bodies never sent): the last one is over the limit, a
        # stream error (RFC 9113 §5.1.2); the 100 others and the connection go on.
        burst = b"".join(client.request(2 * i + 1, "/echo/open", end=False) for i in range(101))
        client.send(burst)
        frames = client.frames_until(lambda f: isinstance(f, RstStreamFrame))
        resets = [(f.stream_id, f.error_code) for f in frames if isinstance(f, RstStreamFrame)]
        assert resets == [(201, ErrorCodes.REFUSED_STREAM)]
        assert not any(isinstance(f, GoAwayFrame) for f in frames)
        # One of the 100 finishes (its body ends): the upstream answers it.
        client.send(DataFrame(1, b"", flags=["END_STREAM"]).serialize())
        frames = client.frames_until(
            lambda f: isinstance(f, DataFrame) and f.stream_id == 1 and "END_STREAM" in f.flags
        )
        assert not any(isinstance(f, GoAwayFrame) for f in frames)
    finally:
        client.close()
    assert h2s.upstreams["a"].seen("/echo/open") <= 100


def test_rapid_reset_is_bounded_and_costs_nothing_upstream(h2s: Stack) -> None:
    upstream = h2s.upstreams["a"]
    client = RawH2(h2s.gateway)
    try:
        burst = bytearray()
        for i in range(1000):
            burst += client.request(2 * i + 1, "/echo/rapid-reset")
            burst += RstStreamFrame(2 * i + 1, error_code=ErrorCodes.CANCEL).serialize()
        client.send(bytes(burst))
        frames = client.frames_until(lambda f: isinstance(f, GoAwayFrame))
        assert goaway(frames).error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert client.is_closed()
    finally:
        client.close()
    # Opened and cancelled in the same read, a stream never reaches the app; only a pair torn
    # across two reads (at most one per TLS record of the burst) could start first.
    assert upstream.seen("/echo/rapid-reset") <= 5
    h2s.gateway.wait_for_log("rapid reset")
    with h2_client(h2s.gateway) as fresh:
        assert fresh.get("/echo").status_code == 200  # the gateway itself is unharmed


def test_continuation_flood_closes_the_connection(h2s: Stack) -> None:
    client = RawH2(h2s.gateway)
    try:
        first = HeadersFrame(1, flags=["END_STREAM"])  # no END_HEADERS: a block in progress
        first.data = client.encoder.encode(
            [(":method", "GET"), (":scheme", "https"), (":path", "/echo/flood")]
        )
        flood = bytearray(first.serialize())
        for _ in range(200):
            flood += ContinuationFrame(1, data=b"\x00" * 1024).serialize()
        try:
            client.send(bytes(flood))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # closed while we were still flooding: also a pass
        frames = client.frames_until(lambda f: isinstance(f, GoAwayFrame))
        assert goaway(frames).error_code == ErrorCodes.PROTOCOL_ERROR
        assert client.is_closed()
    finally:
        client.close()
    assert h2s.upstreams["a"].seen("/echo/flood") == 0


def test_hpack_bomb_is_a_connection_error(h2s: Stack) -> None:
    client = RawH2(h2s.gateway)
    try:
        # A 4000-byte value enters the dynamic table once, then is referenced by one byte
        # each time: 50 references decode to ~200 KB, over max_header_bytes (64 KiB).
        frame = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
        headers = [(":method", "GET"), (":scheme", "https"), (":authority", "localhost")]
        headers += [(":path", "/echo/bomb"), *[("x-bomb", "b" * 4000)] * 50]
        frame.data = client.encoder.encode(headers)
        assert len(frame.data) < 5000
        client.send(frame.serialize())
        frames = client.frames_until(lambda f: isinstance(f, GoAwayFrame))
        assert goaway(frames).error_code in (
            ErrorCodes.ENHANCE_YOUR_CALM,
            ErrorCodes.COMPRESSION_ERROR,
        )
        assert client.is_closed()
    finally:
        client.close()
    assert h2s.upstreams["a"].seen("/echo/bomb") == 0


def test_idle_connection_is_closed_with_goaway(h2s: Stack) -> None:
    client = RawH2(h2s.gateway)
    try:
        client.send(client.request(1, "/echo/idle"))
        client.frames_until(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags)
        started = time.monotonic()
        frames = client.frames_until(lambda f: isinstance(f, GoAwayFrame), timeout=10)
        waited = time.monotonic() - started
        assert goaway(frames).error_code == ErrorCodes.NO_ERROR
        assert goaway(frames).last_stream_id == 1
        assert 0.5 < waited < 8  # keepalive_timeout = 1.0, with slack for a busy machine
        assert client.is_closed()
    finally:
        client.close()


def test_slow_reader_does_not_make_the_gateway_buffer(h2s: Stack) -> None:
    """A client that never opens its window past the initial 64 KiB: the gateway stops
    reading the (endless) upstream response instead of buffering it."""
    gw = h2s.gateway
    client = RawH2(gw)
    try:
        before = vm_rss(gw.process.pid)
        with RssSampler(gw.process.pid) as sampler:
            client.send(client.request(1, "/forever"))
            frames = client.frames_until(lambda f: False, timeout=2.0)
        received = sum(len(f.data) for f in frames if isinstance(f, DataFrame))
        assert 0 < received <= 65535  # the client's window, not a byte more
        assert sampler.peak - before < 20 * 1024 * 1024
        # Opening the window lets the response go on.
        client.send(WindowUpdateFrame(1, window_increment=1 << 20).serialize())
        client.send(WindowUpdateFrame(0, window_increment=1 << 20).serialize())
        more = client.frames_until(lambda f: False, timeout=1.0)
        assert sum(len(f.data) for f in more if isinstance(f, DataFrame)) > 65535
    finally:
        client.close()


def test_header_and_body_timeouts(tmp_path: Path) -> None:
    build = one_pool(gateway={"header_timeout": 1.0, "body_timeout": 1.0})
    with stack(tmp_path, ["a"], build) as s:
        # A request body that stops: 408 on its stream, the connection goes on.
        client = RawH2(s.gateway)
        try:
            client.send(post_head(client, 1, "/upload", 100) + DataFrame(1, b"x" * 10).serialize())
            frames = client.frames_until(lambda f: isinstance(f, RstStreamFrame), timeout=10)
            head = [f for f in frames if isinstance(f, HeadersFrame)]
            assert head and hpack.Decoder().decode(head[0].data)[0] == (":status", "408")
            client.send(client.request(3, "/echo/after-408"))
            frames = client.frames_until(
                lambda f: isinstance(f, DataFrame) and f.stream_id == 3 and "END_STREAM" in f.flags
            )
            body = b"".join(f.data for f in frames if isinstance(f, DataFrame) and f.stream_id == 3)
            assert b"/echo/after-408" in body
        finally:
            client.close()
        assert '"POST /upload HTTP/2" 408' in s.gateway.wait_for_log("POST /upload")
        # A header block that is never finished: GOAWAY and the connection closed.
        client = RawH2(s.gateway)
        try:
            started = time.monotonic()
            unfinished = HeadersFrame(1, flags=["END_STREAM"])
            unfinished.data = client.encoder.encode([(":method", "GET"), (":path", "/")])
            client.send(unfinished.serialize())
            frames = client.frames_until(lambda f: isinstance(f, GoAwayFrame), timeout=10)
            assert goaway(frames).error_code == ErrorCodes.PROTOCOL_ERROR
            assert 0.5 < time.monotonic() - started < 8
            assert client.is_closed()
        finally:
            client.close()


# --- graceful shutdown ----------------------------------------------------------------------


def test_sigterm_sends_goaway_and_in_flight_streams_finish(tmp_path: Path) -> None:
    with stack(tmp_path, ["a"], one_pool()) as s:
        upstream = s.upstreams["a"]
        client = RawH2(s.gateway)
        try:
            client.send(client.request(1, "/hold"))
            deadline = time.monotonic() + 10
            while upstream.stats()["inflight"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            s.gateway.process.signal(signal.SIGTERM)
            frames = client.frames_until(lambda f: isinstance(f, GoAwayFrame))
            assert goaway(frames).last_stream_id == 1
            assert goaway(frames).error_code == ErrorCodes.NO_ERROR
            httpx.post(f"{upstream.url}/hold/release", trust_env=False)
            frames = client.frames_until(
                lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags
            )
            body = b"".join(f.data for f in frames if isinstance(f, DataFrame))
            assert b'"held": true' in body
            assert client.is_closed()
        finally:
            client.close()
        assert s.gateway.process.wait(15) == 0


def test_h2_client_connection_object_agrees(gw2: Gateway) -> None:
    """h2's own client state machine accepts everything the gateway sends for a request."""
    client = RawH2(gw2)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="utf-8"))
    try:
        conn.initiate_connection()
        conn.send_headers(
            1,
            [(":method", "GET"), (":scheme", "https"), (":authority", "localhost")]
            + [(":path", "/bytes?n=300000")],
            end_stream=True,
        )
        # The preface was already sent by RawH2: drop h2's copy of it.
        client.send(conn.data_to_send()[len(PREFACE) :])
        events: list[h2.events.Event] = []
        while not any(isinstance(e, h2.events.StreamEnded) for e in events):
            data = client.sock.recv(65536)
            assert data
            events += conn.receive_data(data)
            for e in events:
                if isinstance(e, h2.events.DataReceived) and e.flow_controlled_length:
                    conn.acknowledge_received_data(e.flow_controlled_length, 1)
                    e.flow_controlled_length = 0
            client.send(conn.data_to_send())
        body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        assert len(body) == 300000
    finally:
        client.close()
