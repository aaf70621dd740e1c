"""``pygateway explain [--method GET] URL [-H 'Name: value' ...] [--config C]``: what the
gateway would do with a request under a config, without sending anything.

Each step calls the function the real request path calls, on a scope built the way the
listener builds it: ``validation.check_request`` (refused or not, and why), the ``Router``
(``Router.match``: which route, by Host then prefix), ``Route.upstream_target`` (the path the
upstream or a redirect sees), the cache's ``decisions.lookup_decision`` and
``storing.why_not_storable`` (served from or stored in the cache, and the headers that decide
it), the ``RoundRobin`` balancer (the rotation over the pool's servers) and
``handlers.redirect.https_location`` (plain HTTP), and whether the express lane
(``gateway.express``) would take the request by its rules.  Nothing is decided here: this
module only builds the inputs and puts the answers into words (``gateway.tracing``'s
``describe_*``).

What explain cannot know offline: which servers are UP right now (the admin API's
``/api/upstreams`` says), what the cache holds (it explains an empty cache), and what the
upstream will answer (it names the response headers that would decide storing).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway.cache.decisions import Action, lookup_decision
from gateway.cache.hot import plain_host
from gateway.cache.storing import why_not_storable
from gateway.cli import Command, add_config_argument, load_or_report
from gateway.config import RouteSettings, Settings
from gateway.errors import ContentTooLarge, GatewayError, NoRouteMatched
from gateway.handlers.redirect import https_location
from gateway.headers import Headers
from gateway.listener import asks_for_websocket
from gateway.middleware import middleware_class
from gateway.routing import Route, Router
from gateway.tracing import STORE_RULES, describe_decision, handler_text, host_rule
from gateway.validation import HostPolicy, RequestFacts, answers_options_itself, check_request

# Request fields the cache's rules read (RFC 9111 §4, §5.2.1; RFC 9110 §13, §14).
CACHE_REQUEST_FIELDS = (
    b"cache-control",
    b"pragma",
    b"authorization",
    b"range",
    b"if-none-match",
    b"if-modified-since",
    b"if-match",
    b"if-unmodified-since",
)
# A response that a shared cache may store, to find what in the request alone prevents it.
_STORABLE_RESPONSE: Headers = [(b"cache-control", b"max-age=60")]
ROTATION_SHOWN = 4  # requests of the round robin shown


class ExplainError(Exception):
    """A request explain cannot build (bad URL or header syntax)."""


@dataclass(frozen=True, slots=True)
class Line:
    step: str
    text: str


def parse_header(text: str) -> tuple[bytes, bytes]:
    name, colon, value = text.partition(":")
    name = name.strip()
    if not colon or not name or " " in name:
        raise ExplainError(f"header {text!r} is not 'Name: value'")
    return name.lower().encode("latin-1"), value.strip().encode("latin-1")


def build_scope(method: str, url: str, headers: Sequence[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The ASGI scope the listener would hand the app for this request (Host from the URL
    unless a Host header is given, as a client would send it)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ExplainError(f"URL {url!r} must be absolute: http://HOST[:PORT]/PATH or https://...")
    raw_path = (parts.path or "/").encode("latin-1")
    fields = list(headers)
    if not any(name == b"host" for name, _ in fields):
        fields.insert(0, (b"host", parts.netloc.encode("latin-1")))
    return {
        "type": "http",
        "method": method.upper(),
        "http_version": "1.1",
        "scheme": parts.scheme,
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": parts.query.encode("latin-1"),
        "headers": fields,
    }


def middleware_layout(
    route: RouteSettings, settings: Settings, cached: bool
) -> tuple[list[str], list[str]]:
    """(outside the cache, inside it): on a caching route the middlewares that can wrap the
    forward (``wrap_forward``: compress) go between cache and proxy, as ``GatewayApp`` builds
    it; the others wrap the handler, first listed outermost."""
    outer: list[str] = []
    inner: list[str] = []
    for name in route.middlewares:
        kind = settings.middlewares[name].type
        if cached and hasattr(middleware_class(kind), "wrap_forward"):
            inner.append(f"{name} ({kind})")
        else:
            outer.append(f"{name} ({kind})")
    return outer, inner


def rotation(servers: Sequence[str], count: int = ROTATION_SHOWN) -> list[str]:
    """The round robin's picks for the next ``count`` requests, every server UP."""
    from gateway.balancer import RoundRobin

    balancer = RoundRobin(servers, lambda _: True)
    return [balancer.choose() or "-" for _ in range(count)]


def explain(
    settings: Settings,
    method: str,
    url: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
    now: float | None = None,
) -> list[Line]:
    """Every step, in the order the gateway takes them."""
    scope = build_scope(method, url, headers)
    g = settings.gateway
    lines: list[Line] = []
    hosts = HostPolicy.from_hostnames(g.hostnames)
    if scope["scheme"] == "http":
        lines.append(Line("listener", f"plain HTTP listener {g.host}:{g.http_port}"))
        try:
            facts = check_request(scope, hosts)
        except GatewayError as exc:
            lines.append(Line("refused", f"400: {exc.message} (gateway.validation)"))
            return lines
        location = https_location(
            facts.hostname,
            g.https_port,
            scope["raw_path"],
            scope["query_string"],
        )
        lines.append(
            Line(
                "redirect",
                f"{g.redirect_status} -> {location.decode('latin-1')}"
                " (gateway.handlers.redirect.https_location); then over HTTPS:",
            )
        )
        scope["scheme"] = "https"
    else:
        lines.append(Line("listener", f"HTTPS listener {g.host}:{g.https_port}"))
    lines += _explain_https(settings, scope, now)
    return lines


def _explain_https(settings: Settings, scope: dict[str, Any], now: float | None) -> list[Line]:
    g = settings.gateway
    lines: list[Line] = []
    try:
        facts = check_request(scope, HostPolicy.from_hostnames(g.hostnames))
        lines.append(
            Line("validation", f"accepted: Host {facts.hostname!r} is served (gateway.validation)")
        )
        if answers_options_itself(scope):
            lines.append(Line("answer", "200 with Allow: OPTIONS with Max-Forwards: 0"))
            return lines
        router: Router[RouteSettings] = Router((Route.from_settings(r), r) for r in settings.routes)
        path: str = scope["path"]
        found = router.match(facts.hostname, path)
        if found is None:
            raise NoRouteMatched(f"no route matches {facts.hostname}{path}")
        route, route_settings = found
        if facts.content_length is not None and facts.content_length > g.max_body_bytes:
            raise ContentTooLarge(
                f"request body of {facts.content_length} bytes is larger than the "
                f"{g.max_body_bytes}-byte limit (max_body_bytes)"
            )
    except GatewayError as exc:
        lines.append(Line("refused", f"{exc.status} {type(exc).__name__}: {exc.message}"))
        return lines
    raw_path: bytes = scope["raw_path"]
    query: bytes = scope["query_string"]
    headers: Headers = scope["headers"]
    method: str = scope["method"]
    cached = settings.cache.enabled and route.cache and route.handler == "proxy"
    hosts = ", ".join(route.hosts) or "any served host"
    lines.append(
        Line(
            "route",
            f"path_prefix={route.path_prefix!r} hosts={hosts}: the longest matching prefix"
            f" of the group for {facts.hostname!r} ({host_rule(route, facts.hostname)});"
            " gateway.routing.Router.match",
        )
    )
    websocket = route.handler == "proxy" and method == "GET" and asks_for_websocket(headers)
    handler = "WebSocket tunnel (gateway.handlers.websocket)" if websocket else None
    lines.append(Line("handler", handler or handler_text(route, cached and not websocket)))
    outer, inner = middleware_layout(route_settings, settings, cached and not websocket)
    if not outer and not inner:
        lines.append(Line("middlewares", "none"))
    else:
        if outer:
            lines.append(Line("middlewares", "in order, outermost first: " + ", ".join(outer)))
        if inner:
            lines.append(
                Line("middlewares", "between the cache and the proxy: " + ", ".join(inner))
            )
    target = route.upstream_target(raw_path, query).decode("latin-1")
    if route.handler == "redirect":
        status = g.redirect_status
        lines.append(Line("answer", f"{status} -> {route_settings.redirect}{target}"))
        return lines
    if route.handler == "static":
        relative = route.relative_path(raw_path).decode("latin-1")  # as StaticHandler does
        lines.append(Line("answer", f"file {relative!r} under {route_settings.static}"))
        return lines
    assert route.upstream is not None  # a proxy route
    pool = settings.upstreams[route.upstream]
    servers = [server.address for server in pool.servers]
    picks = ", ".join(f"#{i + 1} -> {s}" for i, s in enumerate(rotation(servers)))
    lines.append(
        Line(
            "upstream",
            f"pool {pool.name!r}, {len(servers)} server(s); round robin (gateway.balancer)"
            f" over those UP: {picks}; DOWN ones are skipped (health: GET {pool.health_path}"
            f" every {pool.health_interval:g} s)",
        )
    )
    lines.append(Line("upstream", f"request target sent upstream: {method} {target}"))
    if websocket:
        return lines
    lines += _explain_cache(settings, route_settings, method, headers, now)
    lines.append(Line("express", express_text(settings, route_settings, cached, scope, facts)))
    return lines


def express_text(
    settings: Settings,
    route: RouteSettings,
    cached: bool,
    scope: dict[str, Any],
    facts: RequestFacts,
) -> str:
    """Whether the express lane (``gateway.express``) would forward this request without an
    ASGI task, by the rules ``ExpressLane.start`` applies (what it cannot know offline: an
    idle pooled connection, the key's hit-for-pass state)."""
    g = settings.gateway
    if g.trace or g.server_timing:
        return "off (trace mode and server_timing describe the full path)"
    method = scope["method"]
    if (method != "GET" and method != "HEAD") or facts.content_length is not None or facts.chunked:
        return "no: only a GET or HEAD without a body takes the express lane"
    if route.middlewares:
        return "no: the route has middlewares (they run on the full path)"
    if cached and method == "HEAD":
        return "no: a HEAD on a caching route (the cache answers it from a stored GET)"
    if cached and plain_host(scope["headers"]) is None:
        return "no: a request field the cache reads (only gateway.cache.hot.INERT_FIELDS pass)"
    when = (
        "once its response was found not storable (hit-for-pass) and while the store is unchanged, "
        if cached
        else ""
    )
    return (
        f"over HTTP/1.1, {when}with an idle pooled connection: forwarded and answered without"
        " an ASGI task (gateway.express); a 1xx, 5xx, large or streamed body, error or timeout"
        " is handed to the full path"
    )


def _explain_cache(
    settings: Settings,
    route: RouteSettings,
    method: str,
    headers: Headers,
    now: float | None,
) -> list[Line]:
    if not settings.cache.enabled:
        return [Line("cache", "off for the whole gateway ([cache] enabled = false)")]
    if not route.cache:
        return [Line("cache", "off for this route (cache = false)")]
    deciding = [
        f"{name.decode()}: {value.decode('latin-1')}"
        for name, value in headers
        if name in CACHE_REQUEST_FIELDS
    ]
    lines = [
        Line(
            "cache",
            "request headers that decide: " + ("; ".join(deciding) if deciding else "none"),
        )
    ]
    decision = lookup_decision(None, method, headers, time.time() if now is None else now)
    if decision.action is Action.BYPASS:
        lines.append(Line("cache", describe_decision(decision) + " (never served nor stored)"))
        return lines
    lines.append(
        Line(
            "cache",
            "with an empty cache: "
            + describe_decision(decision)
            + "; served from the cache while a stored response is fresh (RFC 9111 §4.2)",
        )
    )
    reason = why_not_storable("GET", 200, headers, _STORABLE_RESPONSE)
    if method != "GET":
        lines.append(Line("cache", "stored: never (HEAD is answered from a stored GET)"))
    elif reason == "authorization":
        lines.append(
            Line(
                "cache",
                "stored: only if the response says public, s-maxage or must-revalidate"
                " (the request has Authorization, RFC 9111 §3.5)",
            )
        )
    elif reason is not None:
        lines.append(
            Line("cache", f"stored: no, whatever the response says: {STORE_RULES[reason]}")
        )
    else:
        lines.append(
            Line(
                "cache",
                "stored when the response allows it: Cache-Control max-age/s-maxage/public,"
                " Expires or Last-Modified; never with no-store, private, Set-Cookie or"
                " Vary: * (CDN-Cache-Control wins over Cache-Control)",
            )
        )
    return lines


def format_lines(lines: Sequence[Line]) -> str:
    width = max(len(line.step) for line in lines)
    return "\n".join(f"{line.step:<{width}}  {line.text}" for line in lines)


# --- the subcommand ---------------------------------------------------------------------------


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="e.g. https://localhost:8443/api/items")
    parser.add_argument("--method", "-X", default="GET", help="default: %(default)s")
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'Name: value'",
        help="a request header (repeatable)",
    )
    add_config_argument(parser)


def cmd_explain(args: argparse.Namespace) -> int:
    settings = load_or_report(args.config)
    if settings is None:
        return 1
    try:
        headers = [parse_header(text) for text in args.header]
        lines = explain(settings, args.method, args.url, headers)
    except ExplainError as exc:
        print(f"pygateway explain: {exc}", file=sys.stderr)
        return 2
    print(f"{args.method.upper()} {args.url} under {args.config} (nothing is sent)")
    print(format_lines(lines))
    return 0


EXPLAIN_COMMAND = Command(
    "print what the gateway would do with a request (nothing is sent)", _arguments, cmd_explain
)
