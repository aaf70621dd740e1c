"""Route middlewares through the real gateway over real TLS: compress, basic_auth,
rate_limit, headers, their order, X-Request-ID and Server-Timing (issue 9)."""

from __future__ import annotations

import base64
import gzip
import json
import re
import subprocess
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import brotli
import httpx
import pytest
import zstandard
from argon2 import PasswordHasher

from e2e.harness import (
    PYTHON,
    REPO,
    EchoUpstream,
    RssSampler,
    Stack,
    StackConfig,
    read_response,
    stack,
)

pytestmark = pytest.mark.e2e

HEX32 = re.compile(r"[0-9a-f]{32}")


def bcrypt_2y(password: str) -> str:
    """What ``htpasswd -B`` writes (the cheapest cost keeps the tests fast)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    return hashed.replace("$2b$", "$2y$", 1)


def write_users(path: Path, **users: str) -> None:
    argon = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    lines = ["# test users"]
    for user, password in users.items():
        hashed = argon.hash(password) if user.startswith("argon") else bcrypt_2y(password)
        lines.append(f"{user}:{hashed}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def routes(*entries: tuple[str, list[str], bool]) -> list[dict[str, object]]:
    return [
        {
            "path_prefix": prefix,
            "upstream": "app",
            "strip_prefix": True,
            "cache": cache,
            "middlewares": names,
        }
        for prefix, names, cache in entries
    ]


@pytest.fixture(scope="module")
def mw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("middlewares")
    write_users(directory / "users.htpasswd", alice="s3cret", jürgen="pässwörd", argon="argon-pw")
    write_users(directory / "bf.htpasswd", bob="right")

    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        return StackConfig(
            pools={"app": [upstreams["a"].url]},
            routes=[
                {"path_prefix": "/", "upstream": "app", "cache": False},
                *routes(
                    ("/gz", ["gzip"], False),
                    ("/cached", ["gzip"], True),
                    ("/auth", ["auth"], False),
                    ("/bf", ["auth_bf"], False),
                    ("/limited", ["limit"], False),
                    ("/limit-then-auth", ["limit_a", "auth"], False),
                    ("/auth-then-limit", ["auth", "limit_b"], False),
                    ("/hdrs", ["hdrs"], False),
                ),
            ],
            gateway={"server_timing": True},
            middlewares={
                "gzip": {"type": "compress"},
                "auth": {
                    "type": "basic_auth",
                    "htpasswd": "users.htpasswd",
                    "realm": "Test Realm",
                    "max_failures": 1000,
                },
                "auth_bf": {
                    "type": "basic_auth",
                    "htpasswd": "bf.htpasswd",
                    "max_failures": 3,
                    "failure_window": 600.0,
                },
                "limit": {"type": "rate_limit", "average": 0.01, "burst": 3},
                "limit_a": {"type": "rate_limit", "average": 0.01, "burst": 2},
                "limit_b": {"type": "rate_limit", "average": 0.01, "burst": 2},
                "hdrs": {
                    "type": "headers",
                    "request_set": {"X-Env": "e2e"},
                    "request_remove": ["X-Drop"],
                    "response_set": {"X-Frame-Options": "DENY"},
                    "response_remove": ["X-Kept"],
                },
            },
        )

    with stack(directory, ["a"], build) as s:
        yield s


@pytest.fixture
def client(mw: Stack) -> Iterator[httpx.Client]:
    with mw.gateway.client() as c:
        yield c


def raw_get(
    client: httpx.Client, path: str, accept: str | None, **headers: str
) -> tuple[httpx.Response, bytes]:
    """The response and its body exactly as sent (not decoded by httpx)."""
    sent = {"Accept-Encoding": accept or "identity", **headers} if accept else {**headers}
    if accept is None:
        sent["Accept-Encoding"] = ""
    with client.stream("GET", path, headers=sent) as response:
        return response, b"".join(response.iter_raw())


def decode(coding: str | None, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        out: bytes = brotli.decompress(data)
        return out
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


# --- compress -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("br;q=0.5, gzip;q=0.9", "gzip"),
        ("gzip;q=0, br", "br"),
        ("identity", None),
        (None, None),
        ("gzip;q=0", None),
    ],
)
def test_compress_negotiates_by_accept_encoding(
    client: httpx.Client, accept: str | None, coding: str | None
) -> None:
    response, raw = raw_get(client, "/gz/json?n=20000", accept)
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == coding
    assert response.headers["vary"] == "Accept-Encoding"
    document = decode(coding, raw)
    assert len(document) == 20000 and json.loads(document)
    # Content-Length is the length of what was sent, never the identity length.
    assert int(response.headers["content-length"]) == len(raw)
    if coding is not None:
        assert len(raw) < 20000 // 4
        assert response.headers["etag"] == 'W/"json-20000"'
        assert "accept-ranges" not in response.headers
    else:
        assert response.headers["etag"] == '"json-20000"'


def test_compress_leaves_alone_what_it_must(client: httpx.Client) -> None:
    # Not a compressible type: untouched, and no Vary (it could never be compressed).
    response, raw = raw_get(client, "/gz/json?n=20000&type=application/octet-stream", "gzip")
    assert "content-encoding" not in response.headers and "vary" not in response.headers
    assert len(raw) == 20000
    # Already encoded by the upstream: passed through as it is.
    response, raw = raw_get(client, "/gz/json?n=20000&ce=br", "gzip")
    assert response.headers["content-encoding"] == "br" and len(raw) == 20000
    # no-transform (RFC 9110 §7.7).
    response, raw = raw_get(client, "/gz/json?n=20000&cc=no-transform", "gzip")
    assert "content-encoding" not in response.headers and len(raw) == 20000
    # Below min_bytes (1024 by default): identity, but it varies.
    response, raw = raw_get(client, "/gz/json?n=500", "gzip")
    assert "content-encoding" not in response.headers and len(raw) == 500
    assert response.headers["vary"] == "Accept-Encoding"
    # HEAD: no body to compress; the identity length stays.
    head = client.head("/gz/json?n=20000", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in head.headers
    assert head.headers["content-length"] == "20000"
    # A route without the middleware is not compressed.
    response, raw = raw_get(client, "/json?n=20000", "gzip")
    assert "content-encoding" not in response.headers and "vary" not in response.headers


def test_compressed_server_sent_events_arrive_event_by_event(
    mw: Stack, client: httpx.Client
) -> None:
    """gzip with a flush per upstream chunk: the first event is decodable while the upstream
    still holds the stream open."""
    upstream = mw.upstreams["a"]
    headers = {"Accept-Encoding": "gzip"}
    with client.stream("GET", "/gz/sse", headers=headers, timeout=5) as response:
        assert response.headers["content-encoding"] == "gzip"
        assert "content-length" not in response.headers
        lines = response.iter_lines()  # httpx decodes gzip incrementally
        assert next(lines) == "data: first"
        with httpx.Client(trust_env=False, timeout=5) as direct:
            direct.post(f"{upstream.url}/sse/release").raise_for_status()
        rest = [line for line in lines if line]
    assert rest == ["data: second"]


def test_cache_stores_each_encoding_once(mw: Stack, client: httpx.Client) -> None:
    """A gzip client and an identity client each get a correct body from the cache: the
    compressed variant is stored (Vary: Accept-Encoding selects it), so a repeat is a hit
    with no recompression, and the upstream answers once per encoding."""
    upstream = mw.upstreams["a"]
    n = 30000 + uuid.uuid4().int % 1000  # a fresh cache key per run
    path = f"/cached/json?n={n}&cc=max-age=60"
    before = upstream.seen("/json")
    expected = [
        ("gzip", "MISS"),
        ("identity", "MISS"),
        ("gzip", "HIT"),
        ("identity", "HIT"),
        ("br", "MISS"),
        ("br", "HIT"),
    ]
    documents = set()
    for accept, label in expected:
        response, raw = raw_get(client, path, accept)
        assert response.status_code == 200
        assert response.headers["x-cache"] == label, accept
        coding = response.headers.get("content-encoding")
        assert coding == (None if accept == "identity" else accept)
        assert response.headers["vary"] == "Accept-Encoding"
        assert int(response.headers["content-length"]) == len(raw)
        document = decode(coding, raw)
        assert len(document) == n
        documents.add(document)
    assert len(documents) == 1
    assert upstream.seen("/json") - before == 3


def test_compressed_stream_runs_in_bounded_memory(mw: Stack, client: httpx.Client) -> None:
    """64 MiB of text streamed through gzip chunk by chunk: every byte decodes, and the
    gateway's RSS grows by far less than the body (the encoder holds only its window)."""
    size = 64 * 1024 * 1024
    decoder = zlib.decompressobj(31)
    received = 0
    headers = {"Accept-Encoding": "gzip"}
    with RssSampler(mw.gateway.process.pid) as rss:
        baseline = rss.peak
        path = f"/gz/bytes?n={size}&type=text/plain"
        with client.stream("GET", path, headers=headers, timeout=60) as response:
            assert response.headers["content-encoding"] == "gzip"
            for chunk in response.iter_raw():
                received += len(decoder.decompress(chunk))
    received += len(decoder.flush())
    assert received == size
    growth = rss.peak - baseline
    assert growth < 16 * 1024 * 1024, f"RSS grew {growth / 1024 / 1024:.0f} MiB"


# --- basic_auth ------------------------------------------------------------------------------


def test_basic_auth_refuses_without_reaching_the_upstream(mw: Stack, client: httpx.Client) -> None:
    upstream = mw.upstreams["a"]
    marker = f"/echo/auth-{uuid.uuid4().hex}"
    for headers in (
        {},
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Bearer abc"},
        basic("alice", "wrong"),
        basic("nobody", "s3cret"),
    ):
        response = client.get(f"/auth{marker}", headers=headers)
        assert response.status_code == 401, headers
        challenge = response.headers["www-authenticate"]
        assert challenge == 'Basic realm="Test Realm", charset="UTF-8"'
        assert response.json()["message"]
        assert response.json()["request_id"] == response.headers["x-request-id"]
    assert upstream.seen(marker) == 0


def test_basic_auth_accepts_bcrypt_argon2id_and_utf8(client: httpx.Client) -> None:
    for user, password in (("alice", "s3cret"), ("jürgen", "pässwörd"), ("argon", "argon-pw")):
        response = client.get("/auth/echo", headers=basic(user, password))
        assert response.status_code == 200, user
        assert response.json()["target"] == "/echo"
    # A verified header is remembered: a repeat is as good as the first.
    assert client.get("/auth/echo", headers=basic("alice", "s3cret")).status_code == 200


def test_htpasswd_is_reread_when_it_changes(mw: Stack, client: httpx.Client) -> None:
    users = mw.gateway.directory / "users.htpasswd"
    assert client.get("/auth/echo", headers=basic("carol", "new-pw")).status_code == 401
    users.write_text(users.read_text() + f"carol:{bcrypt_2y('new-pw')}\n", encoding="utf-8")
    assert client.get("/auth/echo", headers=basic("carol", "new-pw")).status_code == 200
    assert client.get("/auth/echo", headers=basic("alice", "s3cret")).status_code == 200


def test_files_written_by_the_real_htpasswd_tool(tmp_path: Path) -> None:
    """``htpasswd -B`` (apache2-utils, installed by .ci/install-htpasswd) writes $2y$ lines; a
    UTF-8 password goes through it too, and a user it adds later works without a restart."""
    users = tmp_path / "users.htpasswd"
    subprocess.run(["htpasswd", "-cbB", str(users), "alice", "s3cret"], check=True)
    subprocess.run(["htpasswd", "-bB", str(users), "jürgen", "pässwörd"], check=True)
    assert "alice:$2y$" in users.read_text()

    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        return StackConfig(
            pools={"app": [upstreams["a"].url]},
            routes=[{"path_prefix": "/", "upstream": "app", "middlewares": ["auth"]}],
            middlewares={"auth": {"type": "basic_auth", "htpasswd": str(users)}},
        )

    with stack(tmp_path / "gw", ["a"], build) as s, s.gateway.client() as c:
        assert c.get("/echo", headers=basic("alice", "s3cret")).status_code == 200
        assert c.get("/echo", headers=basic("jürgen", "pässwörd")).status_code == 200
        assert c.get("/echo", headers=basic("alice", "S3cret")).status_code == 401
        assert c.get("/echo", headers=basic("bob", "later")).status_code == 401
        subprocess.run(["htpasswd", "-bB", str(users), "bob", "later"], check=True)
        assert c.get("/echo", headers=basic("bob", "later")).status_code == 200
        challenge = c.get("/echo").headers["www-authenticate"]
        assert challenge == 'Basic realm="Restricted", charset="UTF-8"'  # the default realm


def test_failed_logins_are_rate_limited_per_client(mw: Stack, client: httpx.Client) -> None:
    """max_failures = 3: the 4th guess is not even checked (429 + Retry-After), and then not
    even the right password gets through until the bucket refills."""
    statuses = [
        client.get("/bf/echo", headers=basic("bob", f"guess{i}")).status_code for i in range(3)
    ]
    assert statuses == [401, 401, 401]
    locked = client.get("/bf/echo", headers=basic("bob", "guess4"))
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) >= 1
    assert client.get("/bf/echo", headers=basic("bob", "right")).status_code == 429
    mw.gateway.wait_for_log("basic auth failed for user 'bob'")


def test_websocket_upgrade_needs_credentials_too(mw: Stack) -> None:
    with mw.gateway.tls_socket() as tls:
        tls.sendall(
            b"GET /auth/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        status, headers, _ = read_response(tls)
    assert status == 401
    assert headers["www-authenticate"][0].startswith('Basic realm="Test Realm"')


# --- rate_limit ------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(mw: Stack, client: httpx.Client) -> None:
    upstream = mw.upstreams["a"]
    marker = f"/echo/limited-{uuid.uuid4().hex}"
    statuses = [client.get(f"/limited{marker}").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = client.get(f"/limited{marker}")
    assert refused.status_code == 429
    assert refused.headers["retry-after"].isdigit() and int(refused.headers["retry-after"]) >= 1
    assert "rate limit" in refused.json()["message"]
    assert upstream.seen(marker) == 3
    # Only routes that list it: the catch-all route is not limited.
    assert all(client.get("/echo").status_code == 200 for _ in range(5))


def test_middlewares_apply_in_the_listed_order(client: httpx.Client) -> None:
    """limit then auth: anonymous requests spend tokens, so they end up 429; auth then limit:
    anonymous requests stop at auth and never spend any, so they stay 401."""
    first = [client.get("/limit-then-auth/echo").status_code for _ in range(4)]
    assert first == [401, 401, 429, 429]
    second = [client.get("/auth-then-limit/echo").status_code for _ in range(4)]
    assert second == [401, 401, 401, 401]
    ok = [
        client.get("/auth-then-limit/echo", headers=basic("alice", "s3cret")).status_code
        for _ in range(3)
    ]
    assert ok == [200, 200, 429]


def test_rate_limit_holds_across_worker_processes_and_trusts_only_trusted_proxies(
    tmp_path: Path,
) -> None:
    """workers = 2 share the buckets: burst 4 lets exactly 4 of 12 new connections through,
    whichever worker accepts them.  X-Forwarded-For counts only from a trusted proxy."""

    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        return StackConfig(
            pools={"app": [upstreams["a"].url]},
            routes=[{"path_prefix": "/", "upstream": "app", "middlewares": ["limit"]}],
            gateway={"workers": 2, "trusted_proxies": ["127.0.0.2/32"]},
            middlewares={"limit": {"type": "rate_limit", "average": 0.01, "burst": 4}},
        )

    with stack(tmp_path, ["a"], build) as s:
        statuses = []
        for _ in range(12):
            with s.gateway.client() as fresh:  # a new connection each time
                statuses.append(fresh.get("/echo").status_code)
        assert statuses.count(200) == 4 and statuses.count(429) == 8
        # Our address (127.0.0.1) is not a trusted proxy: its X-Forwarded-For is ignored.
        with s.gateway.client() as c:
            spoofed = c.get("/echo", headers={"X-Forwarded-For": "203.0.113.9"})
            assert spoofed.status_code == 429


def test_trusted_proxy_forwarded_client_and_request_id(tmp_path: Path) -> None:
    """Behind a trusted proxy each X-Forwarded-For client has its own bucket, and the proxy's
    X-Request-ID is kept (sent upstream and returned)."""

    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        return StackConfig(
            pools={"app": [upstreams["a"].url]},
            routes=[{"path_prefix": "/", "upstream": "app", "middlewares": ["limit"]}],
            gateway={"trusted_proxies": ["127.0.0.1/32"]},
            middlewares={"limit": {"type": "rate_limit", "average": 0.01, "burst": 1}},
        )

    with stack(tmp_path, ["a"], build) as s, s.gateway.client() as c:
        for client_ip in ("203.0.113.1", "203.0.113.2"):
            headers = {"X-Forwarded-For": client_ip, "X-Request-ID": f"edge-{client_ip}"}
            first = c.get("/echo", headers=headers)
            assert first.status_code == 200
            assert first.headers["x-request-id"] == f"edge-{client_ip}"
            sent = dict((k.lower(), v) for k, v in first.json()["headers"])
            assert sent["x-request-id"] == f"edge-{client_ip}"
            assert c.get("/echo", headers=headers).status_code == 429


def test_many_client_addresses_keep_memory_bounded(tmp_path: Path) -> None:
    """2000 distinct clients (behind a trusted proxy) each get their own full bucket, the
    gateway's memory barely moves (the bucket table has a fixed size), and a client limited
    before the flood is still limited after it."""

    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        return StackConfig(
            pools={"app": [upstreams["a"].url]},
            routes=[{"path_prefix": "/", "upstream": "app", "middlewares": ["limit"]}],
            gateway={"trusted_proxies": ["127.0.0.1/32"], "access_log": False},
            middlewares={"limit": {"type": "rate_limit", "average": 0.001, "burst": 1}},
        )

    with stack(tmp_path, ["a"], build) as s, s.gateway.client() as c:
        limited = {"X-Forwarded-For": "198.51.100.1"}
        assert c.get("/health", headers=limited).status_code == 200
        assert c.get("/health", headers=limited).status_code == 429
        with RssSampler(s.gateway.process.pid) as rss:
            baseline = rss.peak
            for i in range(2000):
                address = f"10.{i // 250}.{i % 250}.1"
                response = c.get("/health", headers={"X-Forwarded-For": address})
                assert response.status_code == 200, address
        assert rss.peak - baseline < 8 * 1024 * 1024
        assert c.get("/health", headers=limited).status_code == 429


# --- headers ---------------------------------------------------------------------------------


def test_header_rules_both_ways(client: httpx.Client) -> None:
    response = client.get("/hdrs/echo", headers={"X-Drop": "1", "X-Env": "client"})
    seen = [(k.lower(), v) for k, v in response.json()["headers"]]
    assert ("x-env", "e2e") in seen and ("x-env", "client") not in seen
    assert all(name != "x-drop" for name, _ in seen)
    assert response.headers["x-frame-options"] == "DENY"
    hop = client.get("/hdrs/hop")
    assert "x-kept" not in hop.headers and hop.headers["x-frame-options"] == "DENY"
    assert client.get("/hop").headers["x-kept"] == "yes"  # a route without the rule


# --- request IDs and Server-Timing ------------------------------------------------------------


def test_request_id_upstream_client_log_and_errors(mw: Stack, client: httpx.Client) -> None:
    response = client.get("/echo", headers={"X-Request-ID": "client-made-up"})
    rid = response.headers["x-request-id"]
    assert HEX32.fullmatch(rid)  # an untrusted client's ID is replaced
    sent = [v for k, v in response.json()["headers"] if k.lower() == "x-request-id"]
    assert sent == [rid]
    assert f"id={rid}" in mw.gateway.wait_for_log(f"id={rid}")
    other = client.get("/echo").headers["x-request-id"]
    assert other != rid and HEX32.fullmatch(other)
    error = client.get("/auth/echo")  # a gateway-made error
    assert error.status_code == 401
    assert error.json()["request_id"] == error.headers["x-request-id"]


def test_server_timing(client: httpx.Client) -> None:
    proxied = client.get("/echo").headers["server-timing"]  # a route with cache = false
    assert re.fullmatch(r"total;dur=[\d.]+, upstream;dur=[\d.]+", proxied)
    path = f"/cached/json?n=2000&cc=max-age=60&v={uuid.uuid4().hex}"
    miss = client.get(path, headers={"Accept-Encoding": "gzip"}).headers["server-timing"]
    assert "cache;desc=MISS" in miss and "upstream;dur=" in miss
    hit = client.get(path, headers={"Accept-Encoding": "gzip"}).headers["server-timing"]
    assert re.fullmatch(r"total;dur=[\d.]+, cache;desc=HIT", hit)
    refused = client.get("/auth/echo").headers["server-timing"]
    assert re.fullmatch(r"total;dur=[\d.]+", refused)


# --- config errors -----------------------------------------------------------------------------


def test_check_reports_middleware_errors_with_the_others(tmp_path: Path) -> None:
    """``run_gateway.py --check`` lists every bad middleware setting next to an unrelated
    error, each naming the file, the key and the value, and exits 1."""
    (tmp_path / "md5.htpasswd").write_text("alice:$apr1$xyz$abc\n")
    config = tmp_path / "config.toml"
    config.write_text(
        """
[gateway]
https_port = 70000

[upstreams.app]
servers = ["http://127.0.0.1:9001"]

[[routes]]
path_prefix = "/"
upstream = "app"
middlewares = ["gzip", "missing"]

[middlewares.gzip]
type = "gzip"

[middlewares.auth]
type = "basic_auth"
htpasswd = "md5.htpasswd"

[middlewares.gone]
type = "basic_auth"
htpasswd = "nowhere.htpasswd"

[middlewares.limit]
type = "rate_limit"
average = 10
bucket = 5

[middlewares.hdrs]
type = "headers"
response_set = {Transfer-Encoding = "chunked"}
"""
    )
    result = subprocess.run(
        [PYTHON, "run_gateway.py", "--check", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if str(config) in line]
    expected = [
        "[gateway] https_port = 70000",
        "[middlewares.gzip] type = 'gzip': must be one of: compress, basic_auth, rate_limit",
        "[middlewares.auth] htpasswd = ",
        "[middlewares.gone] htpasswd = ",
        "[middlewares.limit] bucket: unknown key (allowed keys: average, burst, store)",
        "middlewares = ['gzip', 'missing']: no such middleware 'missing'",
        "[middlewares.hdrs] response_set = {'Transfer-Encoding': 'chunked'}: "
        "'Transfer-Encoding': Transfer-Encoding is a hop-by-hop or framing header",
    ]
    for part in expected:
        assert any(part in line for line in lines), (part, lines)
    assert any("unsupported hash" in line for line in lines)
    assert any("nowhere.htpasswd': no such file" in line for line in lines)


def test_compress_on_a_static_route(tmp_path: Path) -> None:
    """Static files compress like proxied responses; the weakened ETag still revalidates
    (304, weak again), and a Range request gets identity bytes (206 is never re-encoded)."""
    www = tmp_path / "www"
    www.mkdir()
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(3000)).encode()
    (www / "big.txt").write_bytes(text)

    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        return StackConfig(
            pools={"app": [upstreams["a"].url]},
            routes=[
                {"path_prefix": "/", "upstream": "app"},
                {
                    "path_prefix": "/files",
                    "static": str(www),
                    "strip_prefix": True,
                    "middlewares": ["gzip"],
                },
            ],
            middlewares={"gzip": {"type": "compress"}},
        )

    with stack(tmp_path / "gw", ["a"], build) as s, s.gateway.client() as c:
        response, raw = raw_get(c, "/files/big.txt", "gzip")
        assert response.headers["content-encoding"] == "gzip"
        assert gzip.decompress(raw) == text
        etag = response.headers["etag"]
        assert etag.startswith('W/"')
        again = c.get("/files/big.txt", headers={"Accept-Encoding": "gzip", "If-None-Match": etag})
        assert again.status_code == 304 and again.headers["etag"] == etag
        assert again.headers["vary"] == "Accept-Encoding"  # what its 200 said
        ranged = c.get("/files/big.txt", headers={"Accept-Encoding": "gzip", "Range": "bytes=0-9"})
        assert ranged.status_code == 206 and ranged.content == text[:10]
        assert "content-encoding" not in ranged.headers
