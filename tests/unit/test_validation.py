"""What the proxy refuses before forwarding, decided from the ASGI scope alone."""

from __future__ import annotations

import ipaddress
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import (
    LoopDetected,
    MethodNotAllowed,
    MisdirectedRequest,
    NotImplementedMethod,
    RequestRejected,
)
from gateway.validation import (
    HostPolicy,
    ambiguous_path,
    answers_options_itself,
    check_request,
    covers,
    has_dot_segments,
    parse_host,
)

HOSTS = HostPolicy.from_hostnames(["localhost", "*.apps.test"])


def scope(
    *headers: tuple[str, str],
    method: str = "GET",
    path: str = "/",
    raw_path: bytes | None = None,
    target: bytes | None = None,
) -> dict[str, Any]:
    """An ASGI HTTP scope; ``target`` is the raw absolute-form target the listener keeps."""
    result: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "query_string": b"",
        "headers": [(n.lower().encode(), v.encode("latin-1")) for n, v in headers],
    }
    if target is not None:
        result["gateway.target"] = target
    return result


HOST = ("Host", "localhost:8443")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost", ("localhost", None)),
        ("LocalHost:8443", ("localhost", 8443)),
        ("example.test.", ("example.test", None)),
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]", ("::1", None)),
        ("[::1]:443", ("::1", 443)),
        ("[0:0:0:0:0:0:0:1]:1", ("::1", 1)),
        ("a-b.c:0", ("a-b.c", 0)),
        ("h:65535", ("h", 65535)),
    ],
)
def test_parse_host_accepts(value: str, expected: tuple[str, int | None]) -> None:
    assert parse_host(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        ":80",
        "host:",
        "host:abc",
        "host:65536",
        "host:123456",
        "host:-1",
        "host:+80",
        "host:8 0",
        "host:\u00b2",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[zz::1]",
        "[127.0.0.1]",
        "a b",
        "ex@mple.test",
        "evil.test/path",
        "caf\u00e9.test",
        "a" * 254,
        "a:1:2",
    ],
)
def test_parse_host_refuses(value: str) -> None:
    """Anything but name[:port], IPv4[:port] or [IPv6][:port] is a ValueError."""
    with pytest.raises(ValueError):
        parse_host(value)


@given(st.text(max_size=40))
def test_parse_host_raises_only_value_error(value: str) -> None:
    """Any text: a (host, port) of plain ASCII name characters or an IPv6, else ValueError."""
    try:
        host, port = parse_host(value)
    except ValueError:
        return
    assert port is None or 0 <= port <= 65535
    if ":" in host:
        ipaddress.IPv6Address(host)
    else:
        assert host and set(host) <= set(string.ascii_lowercase + string.digits + "-.")


labels = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=12)


@given(st.lists(labels, min_size=1, max_size=4), st.none() | st.integers(0, 65535))
def test_parse_host_round_trips_names(parts: list[str], port: int | None) -> None:
    name = ".".join(parts)
    value = name if port is None else f"{name}:{port}"
    assert parse_host(value) == (name.lower(), port)


@pytest.mark.parametrize(
    ("hostname", "allowed"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("::1", True),
        ("a.apps.test", True),
        ("apps.test", False),
        ("a.b.apps.test", False),
        (".apps.test", False),
        ("evil.example", False),
        ("localhost.evil.example", False),
    ],
)
def test_host_policy(hostname: str, allowed: bool) -> None:
    """Configured names plus the loopback IPs; a wildcard covers exactly one label."""
    assert HOSTS.allows(hostname) is allowed


def test_plain_request_passes_with_its_facts() -> None:
    facts = check_request(scope(HOST), HOSTS)
    assert (facts.host, facts.hostname, facts.content_length, facts.chunked) == (
        "localhost:8443",
        "localhost",
        None,
        False,
    )


@pytest.mark.parametrize(
    ("headers", "length", "chunked"),
    [
        ([("Content-Length", "0")], 0, False),
        ([("Content-Length", " 42 ")], 42, False),
        ([("Transfer-Encoding", "chunked")], None, True),
        ([("Transfer-Encoding", "Chunked")], None, True),
    ],
)
def test_body_framing_facts(
    headers: list[tuple[str, str]], length: int | None, chunked: bool
) -> None:
    facts = check_request(scope(HOST, *headers, method="POST"), HOSTS)
    assert (facts.content_length, facts.chunked) == (length, chunked)


REJECTED = {
    "content-length-and-chunked": scope(
        HOST, ("Content-Length", "5"), ("Transfer-Encoding", "chunked"), method="POST"
    ),
    "two-content-lengths": scope(HOST, ("Content-Length", "5"), ("Content-Length", "6")),
    "repeated-content-length": scope(HOST, ("Content-Length", "5"), ("Content-Length", "5")),
    "content-length-list": scope(HOST, ("Content-Length", "5, 5")),
    "content-length-signed": scope(HOST, ("Content-Length", "+5")),
    "content-length-negative": scope(HOST, ("Content-Length", "-1")),
    "content-length-huge": scope(HOST, ("Content-Length", "1" * 19)),
    "content-length-empty": scope(HOST, ("Content-Length", "")),
    "gzip-then-chunked": scope(HOST, ("Transfer-Encoding", "gzip, chunked")),
    "chunked-twice-one-header": scope(HOST, ("Transfer-Encoding", "chunked, chunked")),
    "chunked-twice-two-headers": scope(
        HOST, ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")
    ),
    "identity": scope(HOST, ("Transfer-Encoding", "identity")),
    "no-host": scope(("Accept", "*/*")),
    "two-hosts": scope(HOST, ("Host", "localhost")),
    "host-with-path": scope(("Host", "localhost/x")),
    "host-bad-port": scope(("Host", "localhost:http")),
    "absolute-form-foreign": scope(HOST, path="/x", target=b"http://evil.example/x"),
    "absolute-form-foreign-h11": scope(HOST, path="/x", raw_path=b"http://evil.example/x"),
    "absolute-form-bad-authority": scope(HOST, path="/x", target=b"http://ev il/x"),
    "asterisk-form": scope(HOST, method="OPTIONS", path="*"),
    "dot-dot": scope(HOST, path="/a/../b"),
    "dot": scope(HOST, path="/a/./b"),
    "trailing-dot-dot": scope(HOST, path="/a/.."),
    "only-dot-dot": scope(HOST, path="/.."),
    # Issue 13: framing of HTTP/1.0, and paths the router and the upstream could read apart.
    "http-1.0-chunked": {**scope(HOST, ("Transfer-Encoding", "chunked")), "http_version": "1.0"},
    "encoded-slash": scope(HOST, path="/admin/x", raw_path=b"/admin%2Fx"),
    "encoded-slash-lower": scope(HOST, path="/a/b", raw_path=b"/a%2fb"),
    "backslash": scope(HOST, path="/a\\b", raw_path=b"/a\\b"),
    "encoded-backslash": scope(HOST, path="/a\\b", raw_path=b"/a%5Cb"),
    "encoded-nul": scope(HOST, path="/a\x00", raw_path=b"/a%00"),
    "encoded-control": scope(HOST, path="/a\x1f", raw_path=b"/a%1F"),
    "overlong-utf8": scope(HOST, path="/a\ufffd\ufffd", raw_path=b"/a%c0%af"),
}


@pytest.mark.parametrize("request_scope", list(REJECTED.values()), ids=list(REJECTED))
def test_refused_with_400(request_scope: dict[str, Any]) -> None:
    """Ambiguous framing, bad or missing Host, tunnels, dot segments: 400 and close."""
    with pytest.raises(RequestRejected) as info:
        check_request(request_scope, HOSTS)
    assert type(info.value) is RequestRejected
    assert info.value.status == 400 and info.value.close_connection
    assert info.value.message


def test_foreign_host_is_misdirected() -> None:
    """A well-formed Host we do not serve: 421, and the connection may stay open."""
    with pytest.raises(MisdirectedRequest) as info:
        check_request(scope(("Host", "evil.example")), HOSTS)
    assert info.value.status == 421 and not info.value.close_connection
    assert "evil.example" in info.value.message


@pytest.mark.parametrize(
    "target",
    [b"https://localhost:8443/x?q=1", b"http://LOCALHOST/x", b"https://a.apps.test"],
)
def test_absolute_form_for_a_served_host_wins_over_host(target: bytes) -> None:
    """RFC 9112 §3.2.2: the target's authority, not Host, names the resource."""
    facts = check_request(scope(("Host", "other.apps.test"), path="/x", target=target), HOSTS)
    assert facts.host == target.split(b"/")[2].decode()
    assert HOSTS.allows(facts.hostname)


@pytest.mark.parametrize("host", ["127.0.0.1:8443", "[::1]:8443", "b.apps.test"])
def test_loopback_and_wildcard_hosts_pass(host: str) -> None:
    assert check_request(scope(("Host", host)), HOSTS).host == host


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", False),
        ("/a/b", False),
        ("/a/..b", False),
        ("/a/b..", False),
        ("/.well-known/x", False),
        ("/a/...", False),
        ("/a/b.c", False),
        ("/..", True),
        ("/.", True),
        ("/a/../b", True),
        ("/a/./b", True),
        ("/a/..", True),
        ("/a/.", True),
    ],
)
def test_has_dot_segments(path: str, expected: bool) -> None:
    assert has_dot_segments(path) is expected


# -- issue 13 ----------------------------------------------------------------------------------


def test_connect_is_501_and_trace_is_405() -> None:
    with pytest.raises(NotImplementedMethod) as connect:
        check_request(scope(("Host", "evil.example:443"), method="CONNECT", path="x"), HOSTS)
    assert connect.value.status == 501 and connect.value.close_connection
    with pytest.raises(MethodNotAllowed) as trace:
        check_request(scope(HOST, method="TRACE"), HOSTS)
    assert trace.value.status == 405
    allow = dict(trace.value.response_headers())[b"allow"]
    assert b"GET" in allow and b"TRACE" not in allow


@pytest.mark.parametrize("via", ["1.1 gateway", "1.0 a, 1.1 gateway", "1.1 gateway , 1.1 b"])
def test_our_own_via_is_a_loop(via: str) -> None:
    with pytest.raises(LoopDetected) as info:
        check_request(scope(HOST, ("Via", via)), HOSTS)
    assert info.value.status == 508


@pytest.mark.parametrize("via", ["1.1 other", "1.1 gateway2", "1.1 my-gateway"])
def test_other_proxies_in_via_pass(via: str) -> None:
    assert check_request(scope(HOST, ("Via", via)), HOSTS).hostname == "localhost"


@pytest.mark.parametrize(
    ("sni", "host", "names", "ok"),
    [
        ("localhost", "localhost:8443", ("localhost",), True),
        ("LOCALHOST", "localhost", ("localhost",), True),
        # Another Host on the same connection is fine when the certificate covers it ...
        ("localhost", "a.apps.test", ("localhost", "*.apps.test"), True),
        ("a.apps.test", "b.apps.test", ("*.apps.test",), True),
        # ... and misdirected when it does not (the Host needs another certificate).
        ("a.apps.test", "b.apps.test", ("a.apps.test",), False),
        ("localhost", "a.apps.test", ("localhost",), False),
        # An SNI naming a host we do not serve, whatever the Host.
        ("evil.example", "localhost", ("localhost",), False),
    ],
)
def test_sni_and_the_certificate_must_fit_the_host(
    sni: str, host: str, names: tuple[str, ...], ok: bool
) -> None:
    request = {**scope(("Host", host)), "gateway.sni": sni, "gateway.cert_names": names}
    if ok:
        assert check_request(request, HOSTS)
    else:
        with pytest.raises(MisdirectedRequest) as info:
            check_request(request, HOSTS)
        assert info.value.status == 421 and sni in info.value.message


@pytest.mark.parametrize(
    ("names", "hostname", "expected"),
    [
        (("localhost",), "localhost", True),
        (("*.apps.test",), "a.apps.test", True),
        (("*.apps.test",), "apps.test", False),
        (("*.apps.test",), "x.a.apps.test", False),  # one label only (RFC 6125)
        (("LOCALHOST",), "localhost", True),
        ((), "localhost", False),
    ],
)
def test_certificate_names_cover(names: tuple[str, ...], hostname: str, expected: bool) -> None:
    assert covers(names, hostname) is expected


def test_the_redirect_listener_keeps_paths_it_does_not_route() -> None:
    request = scope(HOST, path="/a/b", raw_path=b"/a%2Fb")
    assert check_request(request, HOSTS, routed=False).hostname == "localhost"
    with pytest.raises(RequestRejected):
        check_request(request, HOSTS)


@pytest.mark.parametrize(
    ("raw", "path", "problem"),
    [
        (b"/a/b", "/a/b", None),
        (b"/caf%C3%A9", "/caf\u00e9", None),  # valid UTF-8 is fine
        (b"/a%20b", "/a b", None),
        (b"/%EF%BF%BD", "/\ufffd", None),  # an encoded U+FFFD is a real character
        (b"/a%2fb", "/a/b", "%2F"),
        (b"/a%5cb", "/a\\b", "%5C"),
        (b"/a%7f", "/a\x7f", "%7F"),
        (b"/a%e0%80%af", "/a\ufffd\ufffd\ufffd", "not UTF-8"),
    ],
)
def test_ambiguous_path(raw: bytes, path: str, problem: str | None) -> None:
    found = ambiguous_path(raw, path)
    assert (found is None) if problem is None else (problem in (found or ""))


def test_options_with_max_forwards_zero_is_answered_by_the_gateway() -> None:
    assert answers_options_itself(scope(HOST, ("Max-Forwards", "0"), method="OPTIONS"))
    assert not answers_options_itself(scope(HOST, ("Max-Forwards", "1"), method="OPTIONS"))
    assert not answers_options_itself(scope(HOST, method="OPTIONS"))
    assert not answers_options_itself(scope(HOST, ("Max-Forwards", "0")))
