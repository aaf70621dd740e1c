"""Static file routes (``static = "DIR"``) on the real gateway over TLS: fields, conditional
requests, ranges, directories, precompressed sidecars, streaming, and paths that try to
leave the root."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

from e2e.harness import Gateway, RssSampler, StackConfig, gateway, is_closed, read_response

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
LARGE = 48 * MiB
APP_JS = b"export const answer = 42;\n" * 400
# mtime=0: the gzip header holds a timestamp, and the bytes must not depend on the second.
APP_JS_GZ = gzip.compress(APP_JS, mtime=0)
SECRET = "top secret: do not serve"


@dataclass
class Site:
    gateway: Gateway
    www: Path  # served at /static/... (strip_prefix)
    root: Path  # served at /site/... (no strip_prefix: the file is root/site/...)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("static")
    (base / "secret.txt").write_text(SECRET)
    www = base / "www"
    www.mkdir()
    (www / "hello.txt").write_text("hello world\n")
    (www / "app.js").write_bytes(APP_JS)
    (www / "app.js.gz").write_bytes(APP_JS_GZ)
    (www / "app.js.br").write_bytes(b"BROTLI-BYTES")
    (www / "logo.svg").write_text("<svg/>")
    (www / "docs").mkdir()
    (www / "docs" / "index.html").write_text("<h1>docs</h1>")
    (www / "empty").mkdir()
    (www / ".env").write_text(SECRET)
    (www / ".git").mkdir()
    (www / ".git" / "config").write_text(SECRET)
    (www / "outer-link.txt").symlink_to(base / "secret.txt")
    (www / "outer-dir").symlink_to(base)
    (www / "hidden-link").symlink_to(www / ".env")
    (www / "inner-link.txt").symlink_to(www / "hello.txt")
    with (www / "large.bin").open("wb") as f:
        block = os.urandom(MiB)
        for _ in range(LARGE // MiB):
            f.write(block)
    root = base / "root"
    (root / "site").mkdir(parents=True)
    (root / "site" / "page.html").write_text("<p>page</p>")
    config = StackConfig(
        pools={},
        routes=[
            {
                "path_prefix": "/static",
                "static": str(www),
                "strip_prefix": True,
                "static_cache_control": "public, max-age=60",
            },
            {"path_prefix": "/site", "static": str(root)},
        ],
    )
    with gateway(base / "gw", config) as gw:
        yield Site(gw, www, root)


@pytest.fixture
def client(site: Site) -> Iterator[httpx.Client]:
    with site.gateway.client(follow_redirects=False) as c:
        yield c


def raw_get(gw: Gateway, target: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    """A request with the target exactly as given (httpx would normalise dot segments)."""
    with gw.tls_socket() as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % target)
        return read_response(sock)


def test_file_is_served_with_type_length_validators_and_cache_control(
    site: Site, client: httpx.Client
) -> None:
    response = client.get("/static/hello.txt")
    assert response.status_code == 200 and response.content == b"hello world\n"
    st = (site.www / "hello.txt").stat()
    h = response.headers
    assert h["content-type"] == "text/plain; charset=utf-8"
    assert h["content-length"] == "12"
    assert h["etag"].startswith('"') and h["etag"].endswith('"')
    assert h["last-modified"] == formatdate(int(st.st_mtime), usegmt=True)
    assert h["cache-control"] == "public, max-age=60"
    assert h["accept-ranges"] == "bytes"
    assert "date" in h
    assert h["via"] == "1.1 gateway"  # the app's outer send wrapper still adds its fields
    assert client.get("/static/logo.svg").headers["content-type"] == "image/svg+xml; charset=utf-8"


def test_default_cache_control_is_no_cache(client: httpx.Client) -> None:
    assert client.get("/site/page.html").headers["cache-control"] == "no-cache"


def test_head_has_the_fields_and_no_body(client: httpx.Client) -> None:
    get = client.get("/static/app.js")
    head = client.head("/static/app.js")
    assert head.status_code == 200 and head.content == b""
    for name in ("content-length", "content-type", "etag", "last-modified"):
        assert head.headers[name] == get.headers[name]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_405_with_allow(client: httpx.Client, method: str) -> None:
    response = client.request(method, "/static/hello.txt")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert "not allowed" in response.json()["message"]


def test_if_none_match_and_if_modified_since_answer_304(client: httpx.Client) -> None:
    first = client.get("/static/hello.txt")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    for headers in ({"if-none-match": etag}, {"if-modified-since": modified}):
        response = client.get("/static/hello.txt", headers=headers)
        assert response.status_code == 304 and response.content == b""
        assert response.headers["etag"] == etag
        assert response.headers["cache-control"] == "public, max-age=60"
    changed = client.get("/static/hello.txt", headers={"if-none-match": '"something-else"'})
    assert changed.status_code == 200 and changed.content == b"hello world\n"


def test_single_range_is_206(client: httpx.Client) -> None:
    response = client.get("/static/hello.txt", headers={"range": "bytes=6-10"})
    assert response.status_code == 206 and response.content == b"world"
    assert response.headers["content-range"] == "bytes 6-10/12"
    assert response.headers["content-length"] == "5"
    suffix = client.get("/static/hello.txt", headers={"range": "bytes=-3"})
    assert (suffix.status_code, suffix.content) == (206, b"ld\n")


def test_range_outside_the_file_is_416_json(client: httpx.Client) -> None:
    response = client.get("/static/hello.txt", headers={"range": "bytes=100-200"})
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */12"
    assert response.headers["content-type"] == "application/json"
    assert response.json()["message"]


def test_several_ranges_are_answered_200_with_the_whole_file(client: httpx.Client) -> None:
    """Documented: multipart/byteranges is not built; §14.2 lets a server ignore Range."""
    response = client.get("/static/hello.txt", headers={"range": "bytes=0-1,5-6"})
    assert response.status_code == 200 and response.content == b"hello world\n"


def test_if_range_honoured(client: httpx.Client) -> None:
    etag = client.get("/static/hello.txt").headers["etag"]
    same = client.get("/static/hello.txt", headers={"range": "bytes=0-4", "if-range": etag})
    assert (same.status_code, same.content) == (206, b"hello")
    old = client.get("/static/hello.txt", headers={"range": "bytes=0-4", "if-range": '"old"'})
    assert (old.status_code, old.content) == (200, b"hello world\n")


def test_directory_serves_index_and_redirects_to_the_slash_form(client: httpx.Client) -> None:
    index = client.get("/static/docs/")
    assert index.status_code == 200 and index.text == "<h1>docs</h1>"
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    redirect = client.get("/static/docs?lang=en")
    assert redirect.status_code == 308
    assert redirect.headers["location"] == "/static/docs/?lang=en"
    root = client.get("/static")  # the route's own directory, prefix stripped
    assert (root.status_code, root.headers["location"]) == (308, "/static/")


def test_directory_without_index_is_404_not_a_listing(client: httpx.Client) -> None:
    for path in ("/static/empty/", "/static/"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert "listings" in response.json()["message"]


def test_missing_file_is_404_json(client: httpx.Client) -> None:
    response = client.get("/static/nope.txt")
    assert response.status_code == 404 and response.json()["message"] == "no such file"


def test_without_strip_prefix_the_whole_path_is_under_the_root(client: httpx.Client) -> None:
    """Like Nginx ``root``: /site/page.html is ROOT/site/page.html."""
    response = client.get("/site/page.html")
    assert response.status_code == 200 and response.text == "<p>page</p>"


def test_symlink_inside_the_root_is_followed(client: httpx.Client) -> None:
    assert client.get("/static/inner-link.txt").content == b"hello world\n"


@pytest.mark.parametrize(
    ("accept", "encoding", "body"),
    [
        ("gzip, deflate, br", "br", b"BROTLI-BYTES"),
        ("gzip", "gzip", APP_JS_GZ),
        ("br;q=0.5, gzip", "gzip", APP_JS_GZ),
        ("br;q=0, gzip;q=0", None, APP_JS),
        ("identity", None, APP_JS),
        (None, None, APP_JS),
    ],
)
def test_precompressed_sidecars_by_accept_encoding(
    client: httpx.Client, accept: str | None, encoding: str | None, body: bytes
) -> None:
    headers = {"accept-encoding": accept} if accept is not None else {}
    request = client.build_request("GET", "/static/app.js", headers=headers)
    if accept is None:
        del request.headers["accept-encoding"]
    response = client.send(request, stream=True)
    try:
        raw = b"".join(response.iter_raw())  # the bytes on the wire, not decoded
    finally:
        response.close()
    assert response.status_code == 200
    assert raw == body
    assert response.headers.get("content-encoding") == encoding
    assert response.headers["content-length"] == str(len(body))
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"


def test_each_variant_has_its_own_etag(client: httpx.Client) -> None:
    tags = {
        client.get("/static/app.js", headers={"accept-encoding": ae}).headers["etag"]
        for ae in ("identity", "gzip", "br")
    }
    assert len(tags) == 3
    gz = client.get("/static/app.js", headers={"accept-encoding": "gzip"})
    again = client.get(
        "/static/app.js", headers={"accept-encoding": "gzip", "if-none-match": gz.headers["etag"]}
    )
    assert again.status_code == 304 and again.headers["vary"] == "Accept-Encoding"
    plain = client.get(
        "/static/app.js", headers={"accept-encoding": "br", "if-none-match": gz.headers["etag"]}
    )
    assert plain.status_code == 200  # the gzip tag does not validate the br variant


@pytest.mark.parametrize(
    "target",
    [
        b"/static/../secret.txt",
        b"/static/%2e%2e/secret.txt",
        b"/static/%2E%2E%2Fsecret.txt",
        b"/static/.%2e/secret.txt",
        b"/static/docs/../../secret.txt",
        b"/static/..%2fsecret.txt",
        b"/static/..%5csecret.txt",
        b"/static/..\\secret.txt",
        b"/static/secret.txt%00.txt",
        b"/static/%252e%252e/secret.txt",
        b"/static/outer-link.txt",
        b"/static/outer-dir/secret.txt",
        b"/static/hidden-link",
        b"/static/.env",
        b"/static/%2eenv",
        b"/static/.git/config",
        b"/site/../www/.env",
        b"/static//..//secret.txt",
    ],
)
def test_no_path_leaves_the_root_or_shows_a_dotfile(site: Site, target: bytes) -> None:
    status, headers, body = raw_get(site.gateway, target)
    assert status in (400, 404), (target, status, body)
    assert headers["content-type"] == ["application/json"]
    assert json.loads(body)["message"]
    assert SECRET.encode() not in body


def test_dotfiles_are_404(client: httpx.Client) -> None:
    for path in ("/static/.env", "/static/.git/config", "/static/hidden-link"):
        response = client.get(path)
        assert response.status_code == 404
        assert SECRET not in response.text


def test_keep_alive_survives_404_304_and_206(site: Site) -> None:
    """Answers the gateway makes itself about a file do not close the connection."""
    with site.gateway.tls_socket() as sock:
        for target, extra, want in (
            (b"/static/.env", b"", 404),
            (b"/static/hello.txt", b"If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n", 304),
            (b"/static/hello.txt", b"Range: bytes=0-0\r\n", 206),
            (b"/static/hello.txt", b"", 200),
        ):
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n" % (target, extra))
            status, _, _ = read_response(sock)
            assert status == want
        sock.settimeout(0.2)
        assert not is_closed(sock)


def test_large_file_is_streamed_in_bounded_memory(site: Site, client: httpx.Client) -> None:
    """48 MiB arrive intact while the gateway's RSS grows far less than the file."""
    client.get("/static/hello.txt").raise_for_status()  # warm up before the baseline
    expected = hashlib.sha256((site.www / "large.bin").read_bytes()).hexdigest()
    digest = hashlib.sha256()
    received = 0
    with RssSampler(site.gateway.process.pid) as rss:
        baseline = rss.peak
        with client.stream("GET", "/static/large.bin") as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(LARGE)
            for chunk in response.iter_raw():
                digest.update(chunk)
                received += len(chunk)
    assert received == LARGE and digest.hexdigest() == expected
    assert rss.peak - baseline < 16 * MiB, f"RSS grew by {(rss.peak - baseline) / MiB:.1f} MiB"


def test_large_range_is_streamed_from_its_offset(site: Site, client: httpx.Client) -> None:
    data = (site.www / "large.bin").read_bytes()[10 * MiB + 7 : 20 * MiB]
    response = client.get("/static/large.bin", headers={"range": f"bytes={10 * MiB + 7}-"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {10 * MiB + 7}-{LARGE - 1}/{LARGE}"
    assert response.content[: len(data)] == data


def test_client_leaving_mid_file_is_logged_499(site: Site) -> None:
    """The gateway stops sending a file to a client that left (access log: 499) and serves
    on."""
    with site.gateway.tls_socket() as sock:
        sock.sendall(b"GET /static/large.bin?leaving HTTP/1.1\r\nHost: localhost\r\n\r\n")
        received = 0
        while received < MiB:
            received += len(sock.recv(65536))
    line = site.gateway.wait_for_log("/static/large.bin?leaving")
    assert '" 499 ' in line, line
    with site.gateway.client() as client:
        assert client.get("/static/hello.txt").status_code == 200
