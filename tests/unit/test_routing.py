"""Route matching (host rules, then the longest prefix on segment boundaries) and the target
sent upstream."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import RouteSettings
from gateway.routing import Route, Router


@pytest.mark.parametrize(
    ("prefix", "path", "matches"),
    [
        ("/", "/", True),
        ("/", "/anything/at/all", True),
        ("/api", "/api", True),
        ("/api", "/api/", True),
        ("/api", "/api/users", True),
        ("/api", "/apix", False),
        ("/api", "/ap", False),
        ("/api", "/API", False),
        ("/api", "/v1/api", False),
        ("/api/", "/api/x", True),
        ("/api/", "/api/", True),
        ("/api/", "/api", False),
        ("/api/v1", "/api/v1/x", True),
        ("/api/v1", "/api/v10", False),
    ],
)
def test_prefix_matches_on_segment_boundaries(prefix: str, path: str, matches: bool) -> None:
    assert Route(prefix, "u").matches(path) is matches


def router_of(routes: Iterable[Route]) -> Router[str | None]:
    return Router((route, route.upstream) for route in routes)


def upstream_of(router: Router[str | None], path: str, host: str = "localhost") -> str | None:
    found = router.match(host, path)
    return found[1] if found else None


def test_longest_prefix_wins_whatever_the_order() -> None:
    routes = [
        Route("/api", "api"),
        Route("/", "root"),
        Route("/api/v2", "v2"),
        Route("/static/", "s"),
    ]
    for ordering in (routes, routes[::-1]):
        router = router_of(ordering)
        assert upstream_of(router, "/api/v2/x") == "v2"
        assert upstream_of(router, "/api/v2") == "v2"
        assert upstream_of(router, "/api/v20") == "api"
        assert upstream_of(router, "/apiv2") == "root"
        assert upstream_of(router, "/static") == "root"
        assert upstream_of(router, "/static/app.js") == "s"


def test_no_route_matches() -> None:
    assert router_of([Route("/api", "api")]).match("localhost", "/other") is None
    assert router_of([]).match("localhost", "/") is None


@pytest.mark.parametrize(
    ("prefix", "strip", "raw_path", "query", "target"),
    [
        ("/api", False, b"/api/users", b"", b"/api/users"),
        ("/api", False, b"/api/users", b"page=2", b"/api/users?page=2"),
        ("/api", True, b"/api/users", b"", b"/users"),
        ("/api", True, b"/api/users", b"page=2&q=a%20b", b"/users?page=2&q=a%20b"),
        ("/api", True, b"/api", b"", b"/"),
        ("/api", True, b"/api", b"x=1", b"/?x=1"),
        ("/api", True, b"/api/", b"", b"/"),
        ("/api/", True, b"/api/users", b"", b"/users"),
        ("/api", True, b"/api/a%2Fb", b"", b"/a%2Fb"),
        ("/", True, b"/users", b"q", b"/users?q"),
        ("/a/b", True, b"/a/b/c/d", b"", b"/c/d"),
    ],
)
def test_upstream_target(
    prefix: str, strip: bool, raw_path: bytes, query: bytes, target: bytes
) -> None:
    """The raw (still percent-encoded) path, minus the prefix with strip_prefix, plus the
    query."""
    assert Route(prefix, "u", strip_prefix=strip).upstream_target(raw_path, query) == target


def test_strip_prefix_applies_to_an_encoded_prefix() -> None:
    """/%61pi/x is routed as /api/x, so the upstream must see /x, exactly as for /api/x."""
    route = Route("/api", "u", strip_prefix=True)
    assert route.matches("/api/x")  # the decoded path the router sees
    assert route.upstream_target(b"/%61pi/x", b"") == b"/x"


def test_route_from_settings() -> None:
    settings = RouteSettings(
        "/api", "backend", hosts=("app.localhost",), strip_prefix=True, cache=False
    )
    assert Route.from_settings(settings) == Route(
        "/api", "backend", ("app.localhost",), "proxy", True, False
    )
    static = RouteSettings("/s", static=Path("/srv"))
    assert Route.from_settings(static).handler == "static"
    assert Route.from_settings(RouteSettings("/r", redirect="https://x.test")).handler == "redirect"


segments = st.sampled_from(["a", "b", "ab", "api", "v1"])
prefixes = st.builds(
    lambda parts, slash: "/" + "/".join(parts) + ("/" if slash and parts else ""),
    st.lists(segments, max_size=3),
    st.booleans(),
)
paths = st.lists(segments | st.just(""), max_size=4).map(lambda parts: "/" + "/".join(parts))


def reference_match(prefixes: list[str], path: str) -> str | None:
    """Longest prefix p with path == p or path starting with p + "/" (or p ending in "/")."""
    candidates = [
        p for p in prefixes if path == p or path.startswith(p if p.endswith("/") else p + "/")
    ]
    return max(candidates, key=len, default=None)


@given(st.lists(prefixes, unique=True, max_size=5), paths)
def test_router_agrees_with_a_reference(route_prefixes: list[str], path: str) -> None:
    router = router_of(Route(p, p) for p in route_prefixes)
    assert upstream_of(router, path) == reference_match(route_prefixes, path)


# --- host rules -------------------------------------------------------------------------------

HOST_ROUTES = [
    Route("/", "default"),
    Route("/api", "default-api"),
    Route("/", "app", hosts=("app.localhost",)),
    Route("/admin", "app-admin", hosts=("app.localhost",)),
    Route("/", "wild", hosts=("*.localhost",)),
    Route("/ws", "wild-ws", hosts=("*.localhost",)),
    Route("/only", "exact-only", hosts=("api.localhost", "API2.localhost".lower())),
]


@pytest.mark.parametrize(
    ("host", "path", "upstream"),
    [
        # Exact host first, longest prefix within it.
        ("app.localhost", "/", "app"),
        ("app.localhost", "/admin/x", "app-admin"),
        ("app.localhost", "/api", "app"),  # the exact group's "/" beats the default "/api"
        # A wildcard covers one label; its routes come before the host-less ones.
        ("other.localhost", "/", "wild"),
        ("other.localhost", "/ws/x", "wild-ws"),
        ("a.b.localhost", "/", "default"),  # two labels: not covered by *.localhost
        ("localhost", "/", "default"),
        ("localhost", "/api/v1", "default-api"),
        # An exact group whose prefixes do not match hands on to the wildcard, then default.
        ("api.localhost", "/only/x", "exact-only"),
        ("api.localhost", "/ws", "wild-ws"),
        ("api2.localhost", "/other", "wild"),
        ("example.test", "/api", "default-api"),
    ],
)
def test_host_precedence(host: str, path: str, upstream: str) -> None:
    for ordering in (HOST_ROUTES, HOST_ROUTES[::-1]):
        assert upstream_of(router_of(ordering), path, host) == upstream


def test_no_host_less_route_means_no_match_for_other_hosts() -> None:
    router = router_of([Route("/", "app", hosts=("app.localhost",))])
    assert upstream_of(router, "/", "app.localhost") == "app"
    assert router.match("localhost", "/") is None
    assert router.match("x.app.localhost", "/") is None


def test_relative_path_for_static_and_redirect_routes() -> None:
    assert Route("/static", strip_prefix=True).relative_path(b"/static/a/b.css") == b"/a/b.css"
    assert Route("/static").relative_path(b"/static/a.css") == b"/static/a.css"
