"""Static files: the pure rules (path decoding and containment, content types, ETags,
conditional requests, ranges, the choice of a precompressed sidecar), the filesystem lookup
on a temporary directory, and the handler driven in-process with a fake request."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.access_log import Exchange
from gateway.asgi import Message
from gateway.errors import (
    ClientDisconnected,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    RangeNotSatisfiable,
    RequestRejected,
)
from gateway.handlers.static import StaticHandler
from gateway.handlers.static_fs import (
    DirectoryWithoutSlash,
    Found,
    Lookups,
    directory_location,
    find_and_open,
    inside,
    path_segments,
    read_nowait,
    resolve,
)
from gateway.handlers.static_http import (
    Conditions,
    choose_coding,
    content_type,
    entity_tag,
    if_range_holds,
    not_modified,
    parse_accept_encoding,
    single_range,
)
from gateway.request import Request
from gateway.routing import Route
from gateway.validation import RequestFacts

# --- the path -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "segments"),
    [
        (b"/", ()),
        (b"/index.html", ("index.html",)),
        (b"/a/b/c.txt", ("a", "b", "c.txt")),
        (b"//a///b/", ("a", "b")),
        (b"/a%20b.txt", ("a b.txt",)),
        (b"/%C3%A9t%C3%A9.txt", ("\u00e9t\u00e9.txt",)),
        (b"/a..b/c...", ("a..b", "c...")),
    ],
)
def test_path_segments_decode_each_segment(raw: bytes, segments: tuple[str, ...]) -> None:
    assert path_segments(raw) == segments


@pytest.mark.parametrize(
    "raw",
    [
        b"/../secret",
        b"/a/../../secret",
        b"/%2e%2e/secret",
        b"/%2E%2e/secret",
        b"/.%2e/secret",
        b"/%2e./secret",
        b"/./a",
        b"/a/%2e",
        b"/a%2f..%2fsecret",
        b"/..%2fsecret",
        b"/%2F/etc/passwd",
        b"/a%5c..%5csecret",
        b"/a\\..\\secret",
        b"/file%00.txt",
        b"/%00",
    ],
)
def test_path_segments_refuse_escapes(raw: bytes) -> None:
    """Dot segments in any spelling, encoded slashes, backslashes and NUL: 400."""
    with pytest.raises(RequestRejected):
        path_segments(raw)


@pytest.mark.parametrize(
    "raw", [b"/.env", b"/.git/config", b"/a/.hidden/b.txt", b"/%2egit/HEAD", b"/.well-known/x"]
)
def test_path_segments_refuse_dotfiles_with_404(raw: bytes) -> None:
    with pytest.raises(NotFound, match="dotfiles"):
        path_segments(raw)


def test_path_segments_refuse_invalid_utf8_with_404() -> None:
    with pytest.raises(NotFound):
        path_segments(b"/%ff%fe.txt")


@given(st.binary(max_size=40))
def test_accepted_paths_never_leave_the_root(raw: bytes) -> None:
    """Whatever the bytes, an accepted path joined under the root normalises to a path
    below it, with no hidden segment."""
    root = "/srv/www"
    try:
        segments = path_segments(b"/" + raw)
    except (RequestRejected, NotFound):
        return
    joined = os.path.normpath(os.path.join(root, *segments))
    assert joined == root or joined.startswith(root + "/")
    assert inside(root, joined)
    assert all(s and not s.startswith(".") and "/" not in s for s in segments)


@pytest.mark.parametrize(
    ("real", "result"),
    [
        ("/srv/www", True),
        ("/srv/www/a/b.txt", True),
        ("/srv/www2/a.txt", False),
        ("/srv/wwwx", False),
        ("/srv", False),
        ("/etc/passwd", False),
        ("/srv/www/.git/config", False),
        ("/srv/www/a/.env", False),
    ],
)
def test_inside_checks_containment_and_dot_segments(real: str, result: bool) -> None:
    assert inside("/srv/www", real) is result


def test_inside_allows_a_root_below_a_dot_directory() -> None:
    assert inside("/home/u/.local/site", "/home/u/.local/site/index.html")


@pytest.mark.parametrize(
    ("raw", "query", "location"),
    [
        (b"/docs", b"", b"/docs/"),
        (b"/static/docs", b"a=1&b=%20", b"/static/docs/?a=1&b=%20"),
        (b"//evil.example", b"", b"/evil.example/"),
        (b"///evil.example/x", b"", b"/evil.example/x/"),
    ],
)
def test_directory_location(raw: bytes, query: bytes, location: bytes) -> None:
    assert directory_location(raw, query) == location


# --- content type and validators ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("index.html", "text/html; charset=utf-8"),
        ("INDEX.HTML", "text/html; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("mod.mjs", "text/javascript; charset=utf-8"),
        ("notes.txt", "text/plain; charset=utf-8"),
        ("data.json", "application/json"),
        ("logo.svg", "image/svg+xml; charset=utf-8"),
        ("photo.png", "image/png"),
        ("photo.jpg", "image/jpeg"),
        ("font.woff2", "font/woff2"),
        ("app.wasm", "application/wasm"),
        ("backup.tar.gz", "application/gzip"),
        ("noextension", "application/octet-stream"),
        ("weird.zzzunknown", "application/octet-stream"),
    ],
)
def test_content_type_by_extension(name: str, kind: str) -> None:
    assert content_type(name) == kind


def test_entity_tag_is_strong_and_differs_per_variant() -> None:
    plain = entity_tag(100, 1_700_000_000_123_456_789, None)
    assert plain.startswith(b'"') and plain.endswith(b'"') and not plain.startswith(b"W/")
    tags = {
        plain,
        entity_tag(100, 1_700_000_000_123_456_789, "br"),
        entity_tag(100, 1_700_000_000_123_456_789, "gzip"),
        entity_tag(101, 1_700_000_000_123_456_789, None),
        entity_tag(100, 1_700_000_000_123_456_790, None),
    }
    assert len(tags) == 5


ETAG = b'"abc-10"'
MTIME = 1_700_000_000
LAST_MODIFIED = formatdate(MTIME, usegmt=True).encode()


@pytest.mark.parametrize(
    ("conditions", "result"),
    [
        (Conditions(), False),
        (Conditions(if_none_match=ETAG), True),
        (Conditions(if_none_match=b'W/"abc-10"'), True),  # weak comparison
        (Conditions(if_none_match=b'"x", "abc-10"'), True),
        (Conditions(if_none_match=b"*"), True),
        (Conditions(if_none_match=b'"other"'), False),
        # If-None-Match present: If-Modified-Since is not looked at (§13.2.2).
        (Conditions(if_none_match=b'"other"', if_modified_since=LAST_MODIFIED), False),
        (Conditions(if_modified_since=LAST_MODIFIED), True),
        (Conditions(if_modified_since=formatdate(MTIME + 60, usegmt=True).encode()), True),
        (Conditions(if_modified_since=formatdate(MTIME - 1, usegmt=True).encode()), False),
        (Conditions(if_modified_since=b"yesterday"), False),
    ],
)
def test_not_modified(conditions: Conditions, result: bool) -> None:
    assert not_modified(conditions, ETAG, MTIME) is result


@pytest.mark.parametrize(
    ("value", "now", "result"),
    [
        (ETAG, MTIME + 100, True),
        (b'W/"abc-10"', MTIME + 100, False),  # a weak tag never matches strongly
        (b'"other"', MTIME + 100, False),
        (LAST_MODIFIED, MTIME + 100, True),
        (LAST_MODIFIED, MTIME + 0.5, False),  # modified within the second: not strong
        (formatdate(MTIME + 1, usegmt=True).encode(), MTIME + 100, False),
        (b"garbage", MTIME + 100, False),
    ],
)
def test_if_range_holds(value: bytes, now: float, result: bool) -> None:
    assert if_range_holds(value, ETAG, MTIME, now) is result


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        (b"bytes=0-99", 1000, (0, 99)),
        (b"bytes=500-", 1000, (500, 999)),
        (b"bytes=-100", 1000, (900, 999)),
        (b"bytes=-2000", 1000, (0, 999)),
        (b"bytes=900-5000", 1000, (900, 999)),
        (b"Bytes = 1-2", 1000, (1, 2)),
        (b"bytes=0-10,5-20", 1000, (0, 20)),  # overlapping: merged into one
        (b"bytes=0-10, 2000-3000", 1000, (0, 10)),  # the unsatisfiable part is dropped
        (b"bytes=0-1,5-6", 1000, None),  # several ranges: 200 with the whole file
        (b"bytes=5-1", 1000, None),  # invalid: ignored
        (b"items=0-1", 1000, None),
        (b"bytes=abc", 1000, None),
        (b"bytes=-", 1000, None),
        (b"bytes=0-" + b"9" * 5000, 1000, (0, 999)),  # more digits than int() takes: the end
        (b"0-1", 1000, None),
    ],
)
def test_single_range(value: bytes, size: int, expected: tuple[int, int] | None) -> None:
    assert single_range(value, size) == expected


@pytest.mark.parametrize(
    ("value", "size"),
    [(b"bytes=1000-", 1000), (b"bytes=5000-6000", 1000), (b"bytes=-0", 1000), (b"bytes=0-", 0)],
)
def test_single_range_unsatisfiable(value: bytes, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        single_range(value, size)
    assert caught.value.response_headers() == [(b"content-range", b"bytes */%d" % size)]


def test_conditions_from_headers_join_lists_and_drop_ambiguous_ranges() -> None:
    conditions = Conditions.from_headers(
        [
            (b"accept-encoding", b"gzip"),
            (b"accept-encoding", b"br;q=0.5"),
            (b"if-none-match", b'"a"'),
            (b"range", b"bytes=0-1"),
            (b"range", b"bytes=5-6"),
            (b"host", b"localhost"),
        ]
    )
    assert conditions.accept_encoding == b"gzip, br;q=0.5"
    assert conditions.if_none_match == b'"a"'
    assert conditions.range is None
    assert Conditions.from_headers([(b"range", b"bytes=0-1")]).range == b"bytes=0-1"


# --- precompressed sidecars ---------------------------------------------------------------


def test_parse_accept_encoding() -> None:
    assert parse_accept_encoding(b"GZIP;q=0.5, br, x-gzip;q=0.7, zstd;q=x, *;q=0") == {
        "gzip": 0.7,
        "br": 1.0,
        "zstd": 0.0,
        "*": 0.0,
    }


@pytest.mark.parametrize(
    ("accept", "available", "chosen"),
    [
        (None, ["br", "gzip"], None),
        (b"", ["br", "gzip"], None),
        (b"gzip, br", ["br", "gzip"], "br"),  # equal q: the server's order
        (b"gzip, deflate", ["br", "gzip"], "gzip"),
        (b"br;q=0.5, gzip", ["br", "gzip"], "gzip"),
        (b"br;q=0, gzip;q=0", ["br", "gzip"], None),
        (b"br;q=0", ["br"], None),
        (b"*", ["br", "gzip"], "br"),
        (b"*;q=0", ["br", "gzip"], None),
        (b"gzip, *;q=0", ["br", "gzip"], "gzip"),
        (b"identity", ["br", "gzip"], None),
        (b"br;q=0.5, identity", ["br", "gzip"], None),  # identity preferred
        (b"br, identity;q=0.5", ["br", "gzip"], "br"),
        (b"x-gzip", ["gzip"], "gzip"),
        (b"br", ["gzip"], None),  # no br sidecar
        (b"br;q=abc, gzip;q=0.1", ["br", "gzip"], "gzip"),
        (b"gzip, br", [], None),
    ],
)
def test_choose_coding(accept: bytes | None, available: list[str], chosen: str | None) -> None:
    assert choose_coding(accept, available) == chosen


# --- the filesystem lookup ----------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A root with files, a sidecar pair, a directory with and one without index.html,
    a dotfile, and symlinks inside and outside; a secret next to (not in) the root."""
    (tmp_path / "secret.txt").write_text("the secret")
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_text("hello world\n")
    (root / "app.js").write_text("console.log(1)\n" * 50)
    (root / "app.js.br").write_bytes(b"BR" * 10)
    (root / "app.js.gz").write_bytes(b"GZ" * 20)
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_text("<h1>docs</h1>")
    (root / "empty").mkdir()
    (root / ".env").write_text("PASSWORD=x")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]")
    (root / "inner-link.txt").symlink_to(root / "hello.txt")
    (root / "outer-link.txt").symlink_to(tmp_path / "secret.txt")
    (root / "outer-dir").symlink_to(tmp_path)
    (root / "hidden-link").symlink_to(root / ".env")
    (root / "loop").symlink_to(root / "loop")
    (root / "lonely.css").write_text("body{}")
    (root / "lonely.css.gz").symlink_to(tmp_path / "secret.txt")  # a sidecar outside: ignored
    return root


def read_all(fd: int) -> bytes:
    return os.pread(fd, 1 << 20, 0)


def open_file(root: str, segments: tuple[str, ...], directory: bool, ae: bytes | None) -> Any:
    return find_and_open(root, segments, directory, ae)[1]


def opened(root: Path, *segments: str, directory: bool = False, ae: bytes | None = None) -> Any:
    file = open_file(os.path.realpath(root), segments, directory, ae)
    try:
        return file, read_all(file.fd)
    finally:
        os.close(file.fd)


def test_open_file_serves_a_file(site: Path) -> None:
    file, data = opened(site, "hello.txt")
    assert data == b"hello world\n"
    assert (file.size, file.coding, file.vary) == (12, None, False)
    assert file.content_type == "text/plain; charset=utf-8"
    assert file.mtime_ns == (site / "hello.txt").stat().st_mtime_ns


def test_open_file_follows_a_symlink_inside_the_root(site: Path) -> None:
    assert opened(site, "inner-link.txt")[1] == b"hello world\n"


@pytest.mark.parametrize(
    "segments",
    [
        ("outer-link.txt",),
        ("outer-dir", "secret.txt"),
        ("hidden-link",),
        ("loop",),
        ("missing.txt",),
        ("hello.txt", "x"),
    ],
)
def test_open_file_refuses_what_resolves_outside_or_is_missing(
    site: Path, segments: tuple[str, ...]
) -> None:
    with pytest.raises(NotFound):
        open_file(os.path.realpath(site), segments, False, None)


def test_open_file_directory_needs_the_slash_then_serves_its_index(site: Path) -> None:
    with pytest.raises(DirectoryWithoutSlash):
        open_file(os.path.realpath(site), ("docs",), False, None)
    file, data = opened(site, "docs", directory=True)
    assert data == b"<h1>docs</h1>"
    assert file.content_type == "text/html; charset=utf-8"


def test_open_file_lists_no_directory(site: Path) -> None:
    with pytest.raises(NotFound, match="listings"):
        open_file(os.path.realpath(site), ("empty",), True, None)


def test_open_file_a_file_with_a_trailing_slash_is_not_found(site: Path) -> None:
    with pytest.raises(NotFound):
        open_file(os.path.realpath(site), ("hello.txt",), True, None)


def test_open_file_a_fifo_is_not_served_and_does_not_block(site: Path) -> None:
    os.mkfifo(site / "pipe")
    with pytest.raises(NotFound):
        open_file(os.path.realpath(site), ("pipe",), False, None)


@pytest.mark.parametrize(
    ("ae", "coding", "data"),
    [
        (None, None, b"console.log(1)\n" * 50),
        (b"gzip, br", "br", b"BR" * 10),
        (b"gzip", "gzip", b"GZ" * 20),
        (b"br;q=0, gzip;q=0", None, b"console.log(1)\n" * 50),
    ],
)
def test_open_file_picks_the_sidecar(
    site: Path, ae: bytes | None, coding: str | None, data: bytes
) -> None:
    file, body = opened(site, "app.js", ae=ae)
    assert (file.coding, body, file.size) == (coding, data, len(data))
    assert file.vary is True
    assert file.content_type == "text/javascript; charset=utf-8"


def test_open_file_ignores_a_sidecar_leading_outside(site: Path) -> None:
    file, body = opened(site, "lonely.css", ae=b"gzip")
    assert (file.coding, file.vary, body) == (None, False, b"body{}")


# --- the handler, in-process --------------------------------------------------------------


class Recorder:
    """The ``send`` and ``receive`` of a fake request: what the handler sent, and a client
    that leaves when ``disconnect`` is set."""

    def __init__(self, on_body: Callable[[int], None] | None = None) -> None:
        self.messages: list[Message] = []
        self.disconnect = asyncio.Event()
        self.on_body = on_body
        self.received = 0

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body" and self.on_body is not None:
            self.on_body(len(self.body_messages))

    async def receive(self) -> Message:
        self.received += 1
        if self.received == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    @property
    def body_messages(self) -> list[Message]:
        return [m for m in self.messages if m["type"] == "http.response.body"]

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.body_messages)


def run(
    root: Path,
    path: bytes,
    *,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    route: Route | None = None,
    query: bytes = b"",
    chunk_size: int = 1 << 16,
    recorder: Recorder | None = None,
    cache_control: str = "no-cache",
) -> Recorder:
    recorder = recorder or Recorder()
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path.decode(),
        "raw_path": path,
        "query_string": query,
        "headers": headers or [],
        "client": ("127.0.0.1", 5000),
        "http_version": "1.1",
    }
    request = Request(
        scope,
        recorder.receive,
        recorder.send,
        RequestFacts("localhost", "localhost", None, False),
        route or Route("/", handler="static"),
        Exchange(scope),
    )
    handler = StaticHandler(root, cache_control, chunk_size=chunk_size)
    asyncio.run(handler(request))
    return recorder


def test_get_answers_the_file_with_its_fields(site: Path) -> None:
    r = run(site, b"/hello.txt", cache_control="public, max-age=60")
    assert r.status == 200 and r.body == b"hello world\n"
    st_ = (site / "hello.txt").stat()
    h = r.headers
    assert h[b"content-type"] == b"text/plain; charset=utf-8"
    assert h[b"content-length"] == b"12"
    assert h[b"etag"] == entity_tag(12, st_.st_mtime_ns, None)
    assert h[b"last-modified"] == formatdate(int(st_.st_mtime), usegmt=True).encode()
    assert h[b"cache-control"] == b"public, max-age=60"
    assert h[b"accept-ranges"] == b"bytes"
    assert b"date" in h and b"vary" not in h and b"content-encoding" not in h


def test_head_has_the_fields_but_no_body(site: Path) -> None:
    r = run(site, b"/hello.txt", method="HEAD")
    assert r.status == 200 and r.body == b""
    assert r.headers[b"content-length"] == b"12"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_are_405_with_allow(site: Path, method: str) -> None:
    with pytest.raises(MethodNotAllowed) as caught:
        run(site, b"/hello.txt", method=method)
    assert caught.value.response_headers() == [(b"allow", b"GET, HEAD")]


def test_if_none_match_answers_304_with_validators(site: Path) -> None:
    etag = run(site, b"/app.js").headers[b"etag"]
    r = run(site, b"/app.js", headers=[(b"if-none-match", etag)])
    assert r.status == 304 and r.body == b""
    assert r.headers[b"etag"] == etag
    assert r.headers[b"vary"] == b"Accept-Encoding"
    assert b"content-length" not in r.headers


def test_range_answers_206(site: Path) -> None:
    r = run(site, b"/hello.txt", headers=[(b"range", b"bytes=6-10")])
    assert r.status == 206 and r.body == b"world"
    assert r.headers[b"content-range"] == b"bytes 6-10/12"
    assert r.headers[b"content-length"] == b"5"


def test_range_is_ignored_on_head(site: Path) -> None:
    r = run(site, b"/hello.txt", method="HEAD", headers=[(b"range", b"bytes=0-1")])
    assert r.status == 200 and r.headers[b"content-length"] == b"12"


def test_range_outside_the_file_is_416(site: Path) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        run(site, b"/hello.txt", headers=[(b"range", b"bytes=12-")])
    assert caught.value.size == 12


def test_if_range_with_an_old_etag_sends_the_whole_file(site: Path) -> None:
    r = run(site, b"/hello.txt", headers=[(b"range", b"bytes=0-4"), (b"if-range", b'"old"')])
    assert r.status == 200 and r.body == b"hello world\n"
    etag = r.headers[b"etag"]
    r = run(site, b"/hello.txt", headers=[(b"range", b"bytes=0-4"), (b"if-range", etag)])
    assert r.status == 206 and r.body == b"hello"


def test_sidecar_is_sent_with_content_encoding_vary_and_its_own_etag(site: Path) -> None:
    plain = run(site, b"/app.js")
    br = run(site, b"/app.js", headers=[(b"accept-encoding", b"gzip, deflate, br")])
    assert br.body == b"BR" * 10
    assert br.headers[b"content-encoding"] == b"br"
    assert br.headers[b"content-length"] == b"20"
    assert br.headers[b"vary"] == b"Accept-Encoding" == plain.headers[b"vary"]
    assert br.headers[b"etag"] != plain.headers[b"etag"]
    assert br.headers[b"content-type"] == plain.headers[b"content-type"]
    # The plain file's ETag does not validate the br variant.
    again = run(
        site,
        b"/app.js",
        headers=[(b"accept-encoding", b"br"), (b"if-none-match", plain.headers[b"etag"])],
    )
    assert again.status == 200


def test_directory_without_slash_redirects_keeping_the_query(site: Path) -> None:
    r = run(site, b"/docs", query=b"x=1")
    assert r.status == 308
    assert r.headers[b"location"] == b"/docs/?x=1"
    assert run(site, b"/docs/").body == b"<h1>docs</h1>"


def test_strip_prefix_maps_the_rest_of_the_path_and_redirects_with_the_prefix(
    site: Path,
) -> None:
    route = Route("/static", handler="static", strip_prefix=True)
    assert run(site, b"/static/hello.txt", route=route).body == b"hello world\n"
    r = run(site, b"/static", route=route)
    assert (r.status, r.headers[b"location"]) == (308, b"/static/")
    with pytest.raises(NotFound):  # the file is not at /static/static/hello.txt
        run(site, b"/static/hello.txt", route=Route("/static", handler="static"))


def test_large_file_goes_out_in_chunks_of_chunk_size(site: Path) -> None:
    data = os.urandom(10_000)
    (site / "big.bin").write_bytes(data)
    r = run(site, b"/big.bin", chunk_size=1024)
    assert r.body == data
    sizes = [len(m["body"]) for m in r.body_messages]
    assert len(sizes) == 10 and max(sizes) == 1024
    assert [m.get("more_body", False) for m in r.body_messages] == [True] * 9 + [False]


def test_range_of_a_large_file_is_streamed_from_its_offset(site: Path) -> None:
    data = os.urandom(10_000)
    (site / "big.bin").write_bytes(data)
    r = run(site, b"/big.bin", chunk_size=1000, headers=[(b"range", b"bytes=2500-7499")])
    assert r.status == 206 and r.body == data[2500:7500]
    assert len(r.body_messages) == 5


def test_client_that_leaves_stops_the_stream(site: Path) -> None:
    (site / "big.bin").write_bytes(b"x" * 100_000)
    recorder = Recorder()
    recorder.on_body = lambda n: recorder.disconnect.set() if n == 2 else None
    with pytest.raises(ClientDisconnected):
        run(site, b"/big.bin", chunk_size=1000, recorder=recorder)
    assert len(recorder.body_messages) < 10


def test_a_file_that_shrinks_while_sent_ends_the_response(site: Path) -> None:
    path = site / "big.bin"
    path.write_bytes(b"x" * 10_000)
    recorder = Recorder(on_body=lambda n: os.truncate(path, 1500) if n == 1 else None)
    with pytest.raises(GatewayError, match="changed"):
        run(site, b"/big.bin", chunk_size=1000, recorder=recorder)
    assert recorder.status == 200  # the head was out: the app aborts the connection


def test_reads_that_need_the_disk_go_to_a_thread(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the page cache does not hold (read_nowait gets nothing) is read with pread in a
    thread, never on the event loop's thread."""
    import threading

    import gateway.handlers.static as static_module

    loop_thread = threading.get_ident()
    threads: set[int] = set()
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        threads.add(threading.get_ident())
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(static_module, "read_nowait", lambda fd, n, offset: b"")
    (site / "big.bin").write_bytes(b"y" * 5000)
    assert run(site, b"/big.bin", chunk_size=1000).body == b"y" * 5000
    assert len(threads) >= 1 and loop_thread not in threads


def test_read_nowait_reads_cached_pages_and_stops_at_the_end(site: Path) -> None:
    fd = os.open(site / "hello.txt", os.O_RDONLY)
    try:
        os.pread(fd, 100, 0)  # in the page cache now
        assert read_nowait(fd, 5, 6) == b"world"
        assert read_nowait(fd, 100, 6) == b"world\n"
        assert read_nowait(fd, 10, 100) == b""
    finally:
        os.close(fd)


def test_lookups_expire_are_bounded_and_keep_no_misses() -> None:
    lookups = Lookups(ttl=1.0, size=2)
    found = Found("/srv/a", "text/plain", ())
    lookups.put((("a",), False), found, now=10.0)
    assert lookups.get((("a",), False), now=10.9) is found
    assert lookups.get((("a",), False), now=11.0) is None  # expired, and dropped
    for name in ("a", "b", "c"):
        lookups.put(((name,), False), Found("/srv/" + name, "text/plain", ()), now=20.0)
    assert lookups.get((("a",), False), now=20.0) is None  # the oldest made room
    assert lookups.get((("c",), False), now=20.0) is not None
    lookups.discard((("c",), False))
    assert lookups.get((("c",), False), now=20.0) is None


def run_many(handler: StaticHandler, site: Path, paths: list[bytes]) -> list[Recorder]:
    """Several requests through one handler (one Lookups), on one event loop."""

    async def go() -> list[Recorder]:
        results = []
        for path in paths:
            recorder = Recorder()
            scope: dict[str, Any] = {
                "type": "http",
                "method": "GET",
                "path": path.decode(),
                "raw_path": path,
                "query_string": b"",
                "headers": [],
            }
            request = Request(
                scope,
                recorder.receive,
                recorder.send,
                RequestFacts("localhost", "localhost", None, False),
                Route("/", handler="static"),
                Exchange(scope),
            )
            try:
                await handler(request)
            except NotFound:
                recorder.messages.append({"type": "not found"})
            results.append(recorder)
        return results

    return asyncio.run(go())


def test_a_hot_path_takes_no_thread_hop_and_notices_removal(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hops: list[str] = []
    real = asyncio.BaseEventLoop.run_in_executor

    def counting(self: Any, executor: Any, func: Any, *args: Any) -> Any:
        hops.append(func.__name__)
        return real(self, executor, func, *args)

    monkeypatch.setattr(asyncio.BaseEventLoop, "run_in_executor", counting)
    handler = StaticHandler(site, "no-cache")
    first, second = run_many(handler, site, [b"/hello.txt", b"/hello.txt"])
    assert first.body == second.body == b"hello world\n"
    assert hops == ["find_and_open"]
    # The content and validators are always the open file's, even within the lookup's ttl.
    (site / "hello.txt").write_text("changed!\n")
    (changed,) = run_many(handler, site, [b"/hello.txt"])
    assert changed.body == b"changed!\n"
    assert changed.headers[b"etag"] != first.headers[b"etag"]
    # A file removed within the ttl is looked up afresh: 404, not a stale answer.
    (site / "hello.txt").unlink()
    (gone,) = run_many(handler, site, [b"/hello.txt"])
    assert gone.messages == [{"type": "not found"}]


def test_date_field_is_current(site: Path) -> None:
    date = run(site, b"/hello.txt").headers[b"date"]
    sent = time.mktime(time.strptime(date.decode(), "%a, %d %b %Y %H:%M:%S GMT"))
    assert abs(sent - time.mktime(time.gmtime())) < 5


def test_resolve_walks_real_directories_and_follows_symlinks_inside(site: Path) -> None:
    root = os.path.realpath(site)
    (site / "assets").mkdir()
    (site / "assets" / "a.css").write_text("a{}")
    (site / "alias").symlink_to(site / "assets")
    (site / "dot-alias").symlink_to(site / ".git")
    found = resolve(root, root, ("alias", "a.css"))
    assert found is not None and found[0] == os.path.join(root, "assets", "a.css")
    assert resolve(root, root, ("assets", "a.css")) == (
        os.path.join(root, "assets", "a.css"),
        os.lstat(site / "assets" / "a.css"),
    )
    assert resolve(root, root, ("outer-dir", "secret.txt")) is None
    assert resolve(root, root, ("dot-alias", "config")) is None
    assert resolve(root, root, ("assets", "missing.css")) is None
    assert resolve(root, root, ("hello.txt", "x")) is None


def test_a_plain_get_of_a_small_file_takes_one_thread_hop(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first chunk is read with the lookup; a conditional GET reads nothing extra."""
    hops: list[str] = []
    real = asyncio.BaseEventLoop.run_in_executor

    def counting(self: Any, executor: Any, func: Any, *args: Any) -> Any:
        hops.append(func.__name__)
        return real(self, executor, func, *args)

    monkeypatch.setattr(asyncio.BaseEventLoop, "run_in_executor", counting)
    assert run(site, b"/hello.txt").body == b"hello world\n"
    assert hops == ["find_and_open"]
    hops.clear()
    r = run(site, b"/hello.txt", headers=[(b"range", b"bytes=0-4")])
    assert r.body == b"hello" and hops == ["find_and_open"]  # the range: read_nowait


def test_a_name_too_long_for_the_file_system_is_404(site: Path) -> None:
    with pytest.raises(NotFound):
        run(site, b"/" + b"a" * 5000 + b".txt")


def test_a_request_cancelled_during_the_lookup_leaks_no_descriptor(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import gateway.handlers.static as static_module

    entered, release = threading.Event(), threading.Event()
    opened_fds: list[int] = []

    def slow_find_and_open(*args: Any) -> Any:
        entered.set()
        release.wait(5)
        found, file = find_and_open(*args)
        opened_fds.append(file.fd)
        return found, file

    monkeypatch.setattr(static_module, "find_and_open", slow_find_and_open)

    def holds_the_file(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}") == str(site / "hello.txt")
        except OSError:
            return False

    async def go() -> None:
        recorder = Recorder()
        scope: dict[str, Any] = {
            "type": "http",
            "method": "GET",
            "path": "/hello.txt",
            "raw_path": b"/hello.txt",
            "query_string": b"",
            "headers": [],
        }
        request = Request(
            scope,
            recorder.receive,
            recorder.send,
            RequestFacts("localhost", "localhost", None, False),
            Route("/", handler="static"),
            Exchange(scope),
        )
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(StaticHandler(site, "no-cache")(request))
        assert await loop.run_in_executor(None, entered.wait, 5)  # the lookup is in its thread
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The thread finishes after the cancellation; its result is closed by a callback on
        # the loop.  Nothing to await for that: poll, bounded.
        for _ in range(500):
            if opened_fds and not holds_the_file(opened_fds[0]):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"descriptor {opened_fds} still open")

    asyncio.run(go())
