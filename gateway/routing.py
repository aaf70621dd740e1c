"""Route matching: which upstream pool serves a path (Nginx ``location`` prefix, Traefik
``PathPrefix``), and the path the upstream sees."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.config import RouteSettings


@dataclass(frozen=True, slots=True)
class Route:
    path_prefix: str
    upstream: str
    strip_prefix: bool = False
    cache: bool = True

    @classmethod
    def from_settings(cls, settings: RouteSettings) -> Route:
        return cls(settings.path_prefix, settings.upstream, settings.strip_prefix, settings.cache)

    def matches(self, path: str) -> bool:
        """Prefix match on whole path segments: ``/api`` matches ``/api`` and ``/api/x`` but
        not ``/apix`` (a prefix ending in ``/`` is a plain string prefix)."""
        prefix = self.path_prefix
        if not path.startswith(prefix):
            return False
        return prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] == "/"

    def upstream_target(self, raw_path: bytes, query: bytes) -> bytes:
        """The request target sent upstream: the raw (still percent-encoded) path, minus the
        prefix when ``strip_prefix`` is set, plus the query."""
        path = raw_path
        if self.strip_prefix and self.path_prefix != "/":
            prefix = self.path_prefix.rstrip("/").encode()
            if path.startswith(prefix):
                path = path[len(prefix) :]
            if not path.startswith(b"/"):
                path = b"/" + path
        return path + b"?" + query if query else path


class Router:
    """Longest ``path_prefix`` wins; ties cannot happen (config rejects duplicate prefixes)."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = sorted(routes, key=lambda r: len(r.path_prefix), reverse=True)

    def match(self, path: str) -> Route | None:
        for route in self.routes:
            if route.matches(path):
                return route
        return None
