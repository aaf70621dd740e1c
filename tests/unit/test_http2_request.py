"""HTTP/2 header blocks as the gateway's ASGI scope (gateway/http2/request.py), the response
header block, and the rapid-reset budget (gateway/http2/limits.py): pure functions."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import MisdirectedRequest, RequestRejected
from gateway.http2.limits import ResetBudget
from gateway.http2.request import MalformedRequest, request_scope, response_headers
from gateway.validation import HostPolicy, check_request

BASE = {"type": "http", "http_version": "2", "scheme": "https", "client": ("127.0.0.1", 5)}


def block(*extra: tuple[bytes, bytes], path: bytes = b"/a/b?x=1") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"localhost:8443"),
        (b":path", path),
        *extra,
    ]


def scope_of(headers: Any, end_stream: bool = True) -> dict[str, Any]:
    return request_scope(headers, end_stream, BASE)


def test_a_request_becomes_the_http11_scope() -> None:
    scope = scope_of(block((b"accept", b"*/*"), path=b"/a%20b/c?x=1&y=2"))
    assert scope["type"] == "http"
    assert scope["http_version"] == "2"
    assert scope["method"] == "GET"
    assert scope["path"] == "/a b/c"
    assert scope["raw_path"] == b"/a%20b/c"
    assert scope["query_string"] == b"x=1&y=2"
    assert scope["client"] == ("127.0.0.1", 5)
    # Host synthesized from :authority, first; no pseudo-header reaches the app or upstream.
    assert scope["headers"] == [(b"host", b"localhost:8443"), (b"accept", b"*/*")]


def test_the_base_scope_is_not_shared_between_streams() -> None:
    first = scope_of(block())
    second = scope_of(block(path=b"/other"))
    assert first["path"] == "/a/b" and second["path"] == "/other"
    assert "method" not in BASE


def test_host_field_alone_serves_as_authority() -> None:
    headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"host", b"h")]
    assert scope_of(headers)["headers"] == [(b"host", b"h")]


def test_host_equal_to_authority_is_kept_once() -> None:
    scope = scope_of(block((b"host", b"LOCALHOST:8443")))
    assert [h for h in scope["headers"] if h[0] == b"host"] == [(b"host", b"localhost:8443")]


def test_validation_sees_exactly_one_host_and_judges_it_like_http11() -> None:
    hosts = HostPolicy.from_hostnames(["localhost"])
    assert check_request(scope_of(block()), hosts).hostname == "localhost"
    foreign = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"evil.test")]
    with pytest.raises(MisdirectedRequest):
        check_request(scope_of([*foreign, (b":path", b"/")]), hosts)
    no_host = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")]
    with pytest.raises(RequestRejected, match="missing Host"):
        check_request(scope_of(no_host), hosts)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ((b"connection", b"keep-alive"), "connection-specific"),
        ((b"keep-alive", b"timeout=5"), "connection-specific"),
        ((b"proxy-connection", b"keep-alive"), "connection-specific"),
        ((b"transfer-encoding", b"chunked"), "connection-specific"),
        ((b"upgrade", b"websocket"), "connection-specific"),
        ((b"te", b"gzip"), "TE"),
        ((b"host", b"other.test"), "differs from :authority"),
        ((b"X-Upper", b"1"), "invalid field name"),
        ((b"bad name", b"1"), "invalid field name"),
        ((b"x-smuggle", b"a\r\nHost: evil"), "invalid value"),
        ((b"x-nul", b"a\x00b"), "invalid value"),
        ((b"x-space", b" padded"), "invalid value"),
        ((b"x-long", b"v" * 300 + b"\r\nHost: evil"), "invalid value"),  # not memoized
        ((b"x-trailing", b"v" * 300 + b"\t"), "invalid value"),
        ((b":method", b"POST"), "after a regular field"),
    ],
)
def test_malformed_requests_are_stream_errors(extra: tuple[bytes, bytes], reason: str) -> None:
    headers = block((b"accept", b"*/*"), extra)
    with pytest.raises(MalformedRequest, match=reason):
        scope_of(headers)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([(b":method", b"GET"), (b":method", b"GET")], "repeated :method"),
        ([(b":protocol", b"websocket")], "unknown pseudo-header"),
        ([(b":method", b"GET"), (b":scheme", b"https")], "missing :scheme or :path"),
        ([(b":scheme", b"https"), (b":path", b"/")], "missing :method"),
        ([(b":method", b"get"), (b":scheme", b"https"), (b":path", b"/")], "invalid :method"),
        ([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"")], "invalid :path"),
        ([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/\xff")], "non-ASCII"),
        (
            [(b":method", b"GET"), (b":authority", b"u@h"), (b":scheme", b"https")],
            "invalid :authority",
        ),
    ],
)
def test_malformed_pseudo_headers(headers: list[tuple[bytes, bytes]], reason: str) -> None:
    with pytest.raises(MalformedRequest, match=reason):
        scope_of(headers)


def test_te_trailers_is_allowed_and_not_forwarded() -> None:
    scope = scope_of(block((b"te", b"trailers")))
    assert all(name != b"te" for name, _ in scope["headers"])


def test_cookie_crumbs_are_joined_for_the_http11_upstream() -> None:
    scope = scope_of(block((b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2")))
    assert scope["headers"][-1] == (b"cookie", b"a=1; b=2")
    assert sum(1 for name, _ in scope["headers"] if name == b"cookie") == 1


def test_a_body_of_unannounced_length_is_forwarded_chunked() -> None:
    post = [(b":method", b"POST"), *block()[1:]]
    scope = scope_of(post, end_stream=False)
    assert scope["headers"][-1] == (b"transfer-encoding", b"chunked")
    facts = check_request(scope, HostPolicy.from_hostnames(["localhost"]))
    assert facts.chunked and facts.content_length is None
    # With Content-Length, or with no body at all, nothing is added.
    sized = scope_of([*post, (b"content-length", b"3")], end_stream=False)
    assert (b"transfer-encoding", b"chunked") not in sized["headers"]
    assert (b"transfer-encoding", b"chunked") not in scope_of(post)["headers"]


def test_connect_reaches_validation_which_refuses_it() -> None:
    scope = scope_of([(b":method", b"CONNECT"), (b":authority", b"localhost:443")])
    with pytest.raises(RequestRejected, match="CONNECT"):
        check_request(scope, HostPolicy.from_hostnames(["localhost"]))


def test_response_headers_drop_http11_connection_management() -> None:
    headers = [
        (b"Content-Type", b"text/plain"),
        (b"connection", b"close"),
        (b"transfer-encoding", b"chunked"),
        (b"keep-alive", b"timeout=5"),
        (b"x-kept", b"1"),
    ]
    assert response_headers(404, headers) == [
        (b":status", b"404"),
        (b"content-type", b"text/plain"),
        (b"x-kept", b"1"),
    ]


def test_reset_budget_allows_a_burst_then_refills_over_time() -> None:
    now = [0.0]
    budget = ResetBudget(burst=3, rate=2.0, clock=lambda: now[0])
    assert [budget.spend() for _ in range(3)] == [True, True, True]
    assert budget.spend() is False  # the fourth reset in the same instant
    now[0] += 1.0  # two tokens back (the failed spend cost one)
    assert budget.spend() is True
    assert budget.spend() is False
    now[0] += 100.0  # never more than the burst
    assert [budget.spend() for _ in range(4)] == [True, True, True, False]


def test_value_checks_are_memoized_for_short_values_only() -> None:
    """The same verdicts twice (the second from the memo), and long values never kept."""
    from gateway.http2 import request

    request._check_short_value.cache_clear()
    for value, valid in ((b"h2load", True), (b"a\nb", False), (b" x", False), (b"", True)):
        assert request._valid_value(value) is valid
        assert request._valid_value(value) is valid
    assert request._check_short_value.cache_info().hits == 4
    assert request._valid_value(b"v" * (request.SHORT_VALUE + 1)) is True
    assert request._check_short_value.cache_info().currsize == 4
