"""Route matching: which route serves a request, by Host and path (Traefik's ``Host`` plus
``PathPrefix`` rules, Nginx's ``server_name`` plus ``location`` prefixes), and the path the
upstream sees.  Pure: no I/O, unit-tested on its own.

Precedence, as in Nginx's ``server_name``: routes for the exact host name first, then routes
for a wildcard covering it (``*.example.test``, one label, as in certificates), then routes
without ``hosts``; within each group the longest ``path_prefix`` wins, and a group whose
prefixes do not match hands the request on to the next group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.config import RouteSettings

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Route:
    path_prefix: str
    upstream: str | None = None
    hosts: tuple[str, ...] = ()
    handler: str = "proxy"  # "proxy", "static" or "redirect"
    strip_prefix: bool = False
    cache: bool = True
    request_buffering: bool = True  # read the body whole before contacting the upstream

    @classmethod
    def from_settings(cls, settings: RouteSettings) -> Route:
        return cls(
            settings.path_prefix,
            settings.upstream,
            settings.hosts,
            settings.handler,
            settings.strip_prefix,
            settings.cache,
            settings.request_buffering,
        )

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
        path = self.relative_path(raw_path)
        return path + b"?" + query if query else path

    def relative_path(self, raw_path: bytes) -> bytes:
        """The raw path, minus the prefix when ``strip_prefix`` is set (always starts "/")."""
        if not self.strip_prefix or self.path_prefix == "/":
            return raw_path
        path = raw_path[_raw_length(raw_path, len(self.path_prefix.rstrip("/"))) :]
        return path if path.startswith(b"/") else b"/" + path


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


class Router(Generic[T]):
    """Finds the route for a host and path, and the value (a handler) paired with it.

    Ties cannot happen: the config rejects two routes with the same hosts and prefix.
    """

    def __init__(self, entries: Iterable[tuple[Route, T]]) -> None:
        exact: dict[str, list[tuple[Route, T]]] = {}
        wildcard: dict[str, list[tuple[Route, T]]] = {}
        default: list[tuple[Route, T]] = []
        for route, value in entries:
            if not route.hosts:
                default.append((route, value))
            for host in route.hosts:
                group = wildcard if host.startswith("*.") else exact
                group.setdefault(host, []).append((route, value))

        def by_prefix(group: list[tuple[Route, T]]) -> list[tuple[Route, T]]:
            return sorted(group, key=lambda entry: len(entry[0].path_prefix), reverse=True)

        self._exact = {host: by_prefix(group) for host, group in exact.items()}
        self._wildcard = {host: by_prefix(group) for host, group in wildcard.items()}
        self._default = by_prefix(default)

    def match(self, hostname: str, path: str) -> tuple[Route, T] | None:
        """The entry for ``hostname`` (lowercase, no port) and the decoded ``path``."""
        if self._exact:
            group = self._exact.get(hostname)
            if group is not None:
                found = _first(group, path)
                if found is not None:
                    return found
        if self._wildcard:
            _, dot, parent = hostname.partition(".")
            if dot:
                group = self._wildcard.get("*." + parent)
                if group is not None:
                    found = _first(group, path)
                    if found is not None:
                        return found
        return _first(self._default, path)


def _first(group: list[tuple[Route, T]], path: str) -> tuple[Route, T] | None:
    for entry in group:
        if entry[0].matches(path):
            return entry
    return None
