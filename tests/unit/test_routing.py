"""Route matching (longest prefix on segment boundaries) and the target sent upstream."""

from __future__ import annotations

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


def upstream_of(router: Router, path: str) -> str | None:
    route = router.match(path)
    return route.upstream if route else None


def test_longest_prefix_wins_whatever_the_order() -> None:
    routes = [
        Route("/api", "api"),
        Route("/", "root"),
        Route("/api/v2", "v2"),
        Route("/static/", "s"),
    ]
    for ordering in (routes, routes[::-1]):
        router = Router(ordering)
        assert upstream_of(router, "/api/v2/x") == "v2"
        assert upstream_of(router, "/api/v2") == "v2"
        assert upstream_of(router, "/api/v20") == "api"
        assert upstream_of(router, "/apiv2") == "root"
        assert upstream_of(router, "/static") == "root"
        assert upstream_of(router, "/static/app.js") == "s"


def test_no_route_matches() -> None:
    assert Router([Route("/api", "api")]).match("/other") is None
    assert Router([]).match("/") is None


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
    settings = RouteSettings("/api", "backend", strip_prefix=True, cache=False)
    assert Route.from_settings(settings) == Route("/api", "backend", True, False)


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
    router = Router(Route(p, p) for p in route_prefixes)
    assert upstream_of(router, path) == reference_match(route_prefixes, path)
