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
            path = raw_path[_raw_length(raw_path, len(self.path_prefix.rstrip("/"))) :]
            if not path.startswith(b"/"):
                path = b"/" + path
        return path + b"?" + query if query else path


def _raw_length(raw_path: bytes, decoded_length: int) -> int:
    """How many bytes of the raw path spell its first ``decoded_length`` decoded characters
    (``/%61pi`` is ``/api``): routing matched the decoded path, stripping cuts the raw one.

    Counts decoded bytes, as uvicorn decodes the path as UTF-8 after unquoting; prefixes in
    the config are ASCII-safe paths, so byte and character counts agree for them.
    """
    i = count = 0
    while count < decoded_length and i < len(raw_path):
        if raw_path[i : i + 1] == b"%" and len(raw_path[i + 1 : i + 3]) == 2:
            i += 3
        else:
            i += 1
        count += 1
    return i


class Router:
    """Longest ``path_prefix`` wins; ties cannot happen (config rejects duplicate prefixes)."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = sorted(routes, key=lambda r: len(r.path_prefix), reverse=True)

    def match(self, path: str) -> Route | None:
        for route in self.routes:
            if route.matches(path):
                return route
        return None
