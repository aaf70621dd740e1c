"""Header rewriting in both directions: hop-by-hop removal and the X-Forwarded-* family."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.headers import (
    FORWARDING,
    HOP_BY_HOP,
    Headers,
    TrustedProxies,
    client_response_headers,
    connection_listed,
    header_value,
    upstream_request_headers,
)

NO_TRUST = TrustedProxies([])
HOST = b"localhost:8443"


def h(*pairs: tuple[str, str]) -> Headers:
    return [(name.encode(), value.encode()) for name, value in pairs]


def names(headers: Headers) -> list[bytes]:
    return [name for name, _ in headers]


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


def rewrite(
    headers: Headers, *, client: str = "203.0.113.7", trusted: TrustedProxies = NO_TRUST
) -> Headers:
    return upstream_request_headers(headers, client=client, host=HOST, trusted=trusted)


def test_request_gets_host_first_and_the_forwarding_family() -> None:
    out = rewrite(h(("host", "ignored"), ("accept", "*/*")))
    assert out[0] == (b"host", HOST)
    assert values(out, b"host") == [HOST]
    assert values(out, b"x-forwarded-for") == [b"203.0.113.7"]
    assert values(out, b"x-real-ip") == [b"203.0.113.7"]
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"x-forwarded-host") == [HOST]
    assert values(out, b"via") == [b"1.1 gateway"]
    assert values(out, b"accept") == [b"*/*"]


def test_request_hop_by_hop_and_connection_listed_headers_are_removed() -> None:
    """Every RFC 9110 §7.6.1 field goes, and so does each field named in Connection
    (case-insensitively, however the list is spaced)."""
    incoming = [(name, b"x") for name in sorted(HOP_BY_HOP)] + h(
        ("connection", "X-One ,x-two"),
        ("x-one", "1"),
        ("x-two", "2"),
        ("x-three", "3"),
    )
    out = rewrite(incoming)
    assert not set(names(out)) & (HOP_BY_HOP | {b"x-one", b"x-two"})
    assert values(out, b"x-three") == [b"3"]


def test_request_content_length_and_expect_are_not_copied() -> None:
    """The proxy frames the upstream body itself, and answers 100-continue locally."""
    out = rewrite(h(("content-length", "5"), ("expect", "100-continue")))
    assert b"content-length" not in names(out) and b"expect" not in names(out)


def test_client_forwarding_headers_are_replaced_not_trusted() -> None:
    out = rewrite(
        h(
            ("x-forwarded-for", "1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "80"),
            ("forwarded", "for=1.2.3.4"),
        )
    )
    assert values(out, b"x-forwarded-for") == [b"203.0.113.7"]
    assert values(out, b"x-real-ip") == [b"203.0.113.7"]
    assert values(out, b"x-forwarded-proto") == [b"https"]
    assert values(out, b"x-forwarded-host") == [HOST]
    assert b"x-forwarded-port" not in names(out) and b"forwarded" not in names(out)


def test_trusted_proxy_chain_is_extended() -> None:
    """From a trusted peer, X-Forwarded-For is extended (all of its headers, in order) and
    X-Real-IP is the first untrusted address from the right (Nginx realip)."""
    trusted = TrustedProxies(["10.0.0.0/8"])
    out = rewrite(
        h(("x-forwarded-for", "198.51.100.1, 1.2.3.4"), ("x-forwarded-for", "10.9.9.9")),
        client="10.0.0.5",
        trusted=trusted,
    )
    assert values(out, b"x-forwarded-for") == [b"198.51.100.1, 1.2.3.4, 10.9.9.9, 10.0.0.5"]
    assert values(out, b"x-real-ip") == [b"1.2.3.4"]


def test_forwarding_fields_listed_in_connection_are_not_believed_either() -> None:
    """A field the trusted proxy listed in Connection was for that hop only (RFC 9110
    §7.6.1): its X-Forwarded-For and Via are dropped, not carried on."""
    trusted = TrustedProxies(["10.0.0.0/8"])
    out = rewrite(
        h(
            ("connection", "x-forwarded-for, via, x-forwarded-prefix"),
            ("x-forwarded-for", "198.51.100.1"),
            ("via", "1.1 other"),
            ("x-forwarded-prefix", "/p"),
        ),
        client="10.0.0.5",
        trusted=trusted,
    )
    assert values(out, b"x-forwarded-for") == [b"10.0.0.5"]
    assert values(out, b"via") == [b"1.1 gateway"]
    assert values(out, b"x-forwarded-prefix") == []


def test_untrusted_peer_is_not_believed_even_with_trusted_networks() -> None:
    trusted = TrustedProxies(["10.0.0.0/8"])
    out = rewrite(h(("x-forwarded-for", "1.2.3.4")), client="203.0.113.7", trusted=trusted)
    assert values(out, b"x-forwarded-for") == [b"203.0.113.7"]
    assert values(out, b"x-real-ip") == [b"203.0.113.7"]


@pytest.mark.parametrize(
    ("peer", "chain", "expected"),
    [
        ("203.0.113.7", ["1.2.3.4"], "203.0.113.7"),
        ("10.0.0.1", ["1.2.3.4", "10.0.0.2"], "1.2.3.4"),
        ("10.0.0.1", ["10.0.0.3", "10.0.0.2"], "10.0.0.3"),
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", ["garbage", "10.0.0.2"], "garbage"),
    ],
)
def test_real_client(peer: str, chain: list[str], expected: str) -> None:
    assert TrustedProxies(["10.0.0.0/8"]).real_client(peer, chain) == expected


def test_trusted_proxies_contains() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "::1"])
    assert trusted and not TrustedProxies([])
    assert trusted.contains("10.255.0.1") and trusted.contains("::1")
    assert not trusted.contains("11.0.0.1") and not trusted.contains("not-an-ip")


def test_via_is_appended_to_existing_via_headers() -> None:
    out = rewrite(h(("via", "1.0 a"), ("via", "1.1 b")))
    assert values(out, b"via") == [b"1.0 a, 1.1 b, 1.1 gateway"]


def test_end_to_end_headers_keep_order_and_repeats() -> None:
    incoming = h(("accept", "a"), ("cookie", "x=1"), ("accept", "b"), ("authorization", "t"))
    out = rewrite(incoming)
    assert [p for p in out if p[0] in (b"accept", b"cookie", b"authorization")] == incoming


def test_response_hop_by_hop_removed_content_length_kept() -> None:
    out = client_response_headers(
        h(
            ("connection", "x-hop, close"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "10"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ),
        extra=[(b"via", b"1.1 gateway")],
    )
    assert out == h(
        ("content-length", "10"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
        ("via", "1.1 gateway"),
    )


def test_connection_listed_ignores_close_and_keep_alive() -> None:
    listed = connection_listed(h(("connection", "close, Keep-Alive, X-A"), ("connection", "x-b")))
    assert listed == {b"x-a", b"x-b"}


def test_header_value_is_the_first_match() -> None:
    headers = h(("a", "1"), ("a", "2"))
    assert header_value(headers, b"a") == b"1"
    assert header_value(headers, b"b") is None


header_names = st.sampled_from(
    sorted(
        HOP_BY_HOP | FORWARDING | {b"host", b"via", b"accept", b"x-a", b"x-b", b"content-length"}
    )
)
header_lists = st.lists(
    st.tuples(header_names, st.sampled_from([b"1", b"x-a", b"x-b, close", b"10.0.0.1"])),
    max_size=12,
)


@given(header_lists, st.booleans())
def test_request_rewrite_invariants(headers: Headers, trust: bool) -> None:
    """Whatever comes in: one Host, one of each forwarding header, no hop-by-hop or
    Connection-listed field, and Via ends with the gateway."""
    listed = connection_listed(headers)
    trusted = TrustedProxies(["10.0.0.0/8"]) if trust else NO_TRUST
    out = rewrite(headers, client="10.0.0.9", trusted=trusted)
    out_names = names(out)
    assert out_names.count(b"host") == 1
    for name in (
        b"x-forwarded-for",
        b"x-real-ip",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"via",
    ):
        assert out_names.count(name) == 1
    assert not set(out_names) & (HOP_BY_HOP | listed | {b"forwarded", b"x-forwarded-port"})
    assert values(out, b"via")[0].endswith(b"1.1 gateway")
    assert values(out, b"x-forwarded-for")[0].endswith(b"10.0.0.9")


@given(header_lists)
def test_response_rewrite_invariants(headers: Headers) -> None:
    """No hop-by-hop or Connection-listed field reaches the client, nor the upstream's
    X-Request-ID (the client gets the gateway's); the rest keep order."""
    listed = connection_listed(headers)
    out = client_response_headers(headers)
    dropped = HOP_BY_HOP | listed | {b"x-request-id"}
    assert out == [p for p in headers if p[0] not in dropped]


# -- issue 13: the URL-rewriting family and underscore names ------------------------------------

REWRITING = [
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Forwarded-Scheme",
    "X-Forwarded-Server",
    "X-Host",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Ssl",
    "Front-End-Https",
    "X-Url-Scheme",
    "X-Client-IP",
    "True-Client-IP",
]


@pytest.mark.parametrize("name", REWRITING)
def test_url_rewriting_headers_from_a_client_are_removed(name: str) -> None:
    """Frameworks rewrite the URL, host or scheme from these: from an arbitrary client they
    are web cache poisoning and path-rule bypasses, so they never reach the upstream."""
    out = rewrite([(name.lower().encode(), b"/admin"), (b"accept", b"*/*")])
    assert name.lower().encode() not in names(out)
    assert values(out, b"accept") == [b"*/*"]


@pytest.mark.parametrize("name", [n for n in REWRITING if n != "X-Forwarded-Port"])
def test_url_rewriting_headers_from_a_trusted_proxy_pass(name: str) -> None:
    trusted = TrustedProxies(["10.0.0.0/8"])
    out = rewrite([(name.lower().encode(), b"v")], client="10.1.2.3", trusted=trusted)
    assert values(out, name.lower().encode()) == [b"v"]
    out = rewrite([(name.lower().encode(), b"v")], client="203.0.113.9", trusted=trusted)
    assert name.lower().encode() not in names(out)


@pytest.mark.parametrize("name", [b"x_forwarded_for", b"x_original_url", b"my_header"])
def test_header_names_with_underscores_are_dropped(name: bytes) -> None:
    """Nginx drops them (underscores_in_headers off): WSGI/CGI map X_Forwarded_For onto the
    same variable as X-Forwarded-For, which would slip past the forwarding rules."""
    trusted = TrustedProxies(["10.0.0.0/8"])
    for client in ("203.0.113.9", "10.1.2.3"):
        out = rewrite([(name, b"1.2.3.4"), (b"my-header", b"ok")], client=client, trusted=trusted)
        assert name not in names(out)
        assert values(out, b"my-header") == [b"ok"]
