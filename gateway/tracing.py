"""Trace mode (``pygateway run --trace``, ``[gateway] trace = true``): one readable block per
request that follows it through the gateway's own stages, in order, with time offsets, each
stage naming the module that did it.

Theory of operation.  A ``Trace`` is a list of ``Stage(at, module, text)``.  The listener
starts it when the request head is parsed (with the connection's facts: new or reused, TLS
version and cipher) and puts it in the scope (``TRACE_SCOPE_KEY``); ``GatewayApp`` hangs it on
the request's ``Exchange`` and every stage after that appends to ``exchange.trace``.  When the
response is done the app adds the final status and logs the block (logger ``gateway.trace``).

Free when off: nothing is allocated and no stage text is built.  The listener and the app
test one class attribute (``trace``) per request; every stage in between tests
``exchange.trace is not None`` once, and only builds its text after that test.

The ``describe_*`` functions turn the decisions the request path already made (the cache's
``Decision``, ``why_not_storable``'s reason, the route the ``Router`` matched, the balancer's
choice) into words; they never decide anything themselves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.cache.decisions import Decision
    from gateway.config import Settings
    from gateway.request import Handler, Request
    from gateway.routing import Route
    from gateway.upstream.group import Upstream

TRACE_SCOPE_KEY = "gateway.trace"
log = logging.getLogger("gateway.trace")


@dataclass(frozen=True, slots=True)
class Stage:
    at: float  # time.perf_counter() when the stage happened
    module: str  # the module that did it, e.g. "gateway.cache.decisions"
    text: str


@dataclass(slots=True)
class Trace:
    """The stages of one request so far; ``started`` is offset 0 (perf_counter seconds)."""

    started: float = field(default_factory=time.perf_counter)
    stages: list[Stage] = field(default_factory=list)

    def add(self, module: str, text: str, at: float | None = None) -> None:
        self.stages.append(Stage(time.perf_counter() if at is None else at, module, text))

    def has(self, module: str) -> bool:
        return any(stage.module == module for stage in self.stages)

    def failed(self, status: int, kind: str, message: str) -> None:
        """A ``GatewayError`` the app turns into the client's answer.  Before validation
        passed, the refusal is the validation's verdict."""
        module = "gateway.validation" if not self.has("gateway.validation") else "gateway.errors"
        self.add(module, f"refused: {status} {kind}: {message}")


# ``pygateway run --trace``: trace mode for the process's lifetime, whatever the file says,
# also after a reload (``runtime.reload.load_new_settings``) re-reads it.
FORCED = False


def forced(settings: Settings) -> Settings:
    """``settings`` with ``[gateway] trace`` on when the command line asked for it."""
    if not FORCED or settings.gateway.trace:
        return settings
    return replace(settings, gateway=replace(settings.gateway, trace=True))


def format_trace(trace: Trace, title: str) -> str:
    """The block: a title line, then one line per stage, ``+offset ms  module  text``."""
    width = max((len(stage.module) for stage in trace.stages), default=0)
    lines = [title]
    for stage in trace.stages:
        offset = (stage.at - trace.started) * 1000
        lines.append(f"  {offset:+9.3f} ms  {stage.module:<{width}}  {stage.text}")
    return "\n".join(lines)


def trace_title(method: str, target: str, status: int, request_id: str, trace: Trace) -> str:
    end = trace.stages[-1].at if trace.stages else trace.started
    return (
        f"trace {method} {target} -> {status} in {(end - trace.started) * 1000:.3f} ms"
        f" (id {request_id or '-'})"
    )


def emit(trace: Trace, title: str) -> None:
    # One log record: the block reaches the log in one write, never interleaved line by line.
    log.info("%s", format_trace(trace, title))


# --- the listener's stages ---------------------------------------------------------------------


def connection_text(
    requests_before: int,
    ssl_object: Any,
    client: tuple[str, int] | None,
) -> str:
    """``connection accepted``: new or reused, TLS version and cipher, the client's address."""
    peer = f"{client[0]}:{client[1]}" if client else "-"
    tls = "plain TCP"
    if ssl_object is not None:
        cipher = ssl_object.cipher()
        tls = f"{ssl_object.version()} {cipher[0] if cipher else '?'}"
        alpn = ssl_object.selected_alpn_protocol()
        if alpn:
            tls += f" (ALPN {alpn})"
    if requests_before == 0:
        return f"connection accepted: new, {tls}, client {peer}"
    return (
        f"connection reused: request #{requests_before + 1} on it (keep-alive), {tls},"
        f" client {peer}"
    )


def head_text(method: str, target: bytes, http_version: str, fields: int, head_bytes: int) -> str:
    """``head parsed``: the request line as sent, how many header fields, the head's size."""
    return (
        f"head parsed: {method} {target.decode('latin-1')} HTTP/{http_version},"
        f" {fields} header fields, {head_bytes} bytes"
    )


def app_trace(scope: Mapping[str, Any]) -> Trace:
    """A trace begun by the app: trace mode was turned on by a reload, after the listeners
    (whose protocol classes are chosen at start-up) began serving without it."""
    trace = Trace()
    target = scope.get("raw_path") or b""
    trace.add(
        "gateway.app",
        f"request received: {scope.get('method')} {target.decode('latin-1')}"
        f" HTTP/{scope.get('http_version', '1.1')} (connection stages need trace mode at start-up)",
    )
    return trace


# --- validation and routing --------------------------------------------------------------------


def validation_text(hostname: str, content_length: int | None, chunked: bool) -> str:
    if chunked:
        body = "chunked body"
    elif content_length:
        body = f"body of {content_length} bytes (Content-Length)"
    else:
        body = "no body"
    return f"accepted: Host {hostname!r} is served, framing unambiguous, {body}"


def host_rule(route: Route, hostname: str) -> str:
    """Why the route's host group applied (the Router's precedence: exact, wildcard, any)."""
    if hostname in route.hosts:
        return f"exact host rule {hostname!r}"
    _, dot, parent = hostname.partition(".")
    if dot and "*." + parent in route.hosts:
        return f"wildcard host rule '*.{parent}'"
    return "no host rule (any served host)"


def handler_text(route: Route, cached: bool) -> str:
    if route.handler == "static":
        return "static files (gateway.handlers.static)"
    if route.handler == "redirect":
        return "redirect (gateway.handlers.redirect)"
    via = ", through the cache" if cached else ""
    return f"proxy to upstream {route.upstream!r}{via} (gateway.handlers.proxy)"


def route_text(route: Route, hostname: str, path: str, cached: bool, websocket: bool) -> str:
    handler = "WebSocket tunnel (gateway.handlers.websocket)" if websocket else None
    strip = ", prefix stripped upstream" if route.strip_prefix and route.path_prefix != "/" else ""
    return (
        f"route path_prefix={route.path_prefix!r} chosen for {path!r}:"
        f" {host_rule(route, hostname)},"
        f" longest matching prefix{strip} -> {handler or handler_text(route, cached)}"
    )


# --- middlewares -------------------------------------------------------------------------------


def traced_middleware(name: str, middleware: Any, inner: Handler) -> Handler:
    """``middleware.wrap(inner)`` with two stages: the middleware entered, and whether it
    passed the request on or answered it itself.  Only built when trace mode is on, so a
    gateway without it runs the middleware chain untouched."""
    module = type(middleware).__module__
    passed_text = f"{name}: passed the request on"

    async def passed_on(request: Request) -> None:
        trace = request.exchange.trace
        if trace is not None:
            trace.add(module, passed_text)
        await inner(request)

    wrapped: Callable[[Request], Awaitable[None]] = middleware.wrap(passed_on)

    async def entered(request: Request) -> None:
        trace = request.exchange.trace
        if trace is None:
            await wrapped(request)
            return
        trace.add(module, f"{name} ({type(middleware).__name__}) entered")
        start = len(trace.stages)
        try:
            await wrapped(request)
        finally:
            if not any(s.text == passed_text for s in trace.stages[start:]):
                status = request.exchange.status
                trace.add(module, f"{name}: answered the request itself ({status})")

    return entered


# --- the cache ---------------------------------------------------------------------------------

# Decision.detail / fwd values -> the rule that decided, in words with its RFC section.
_BYPASS_RULES = {
    "method": "method is not GET/HEAD: never served from the cache (RFC 9111 §4); "
    "a 2xx/3xx invalidates the URL (§4.4)",
    "precondition": "If-Match/If-Unmodified-Since only the origin can evaluate (RFC 9111 §4.3.2)",
    "no-store": "request Cache-Control: no-store (RFC 9111 §5.2.1.5)",
    "range": "Range request with no usable stored response: forwarded as is",
    "body": "GET with a body has no defined meaning (RFC 9110 §9.3.1)",
}
_FWD_RULES = {
    "uri-miss": "no stored response for this URL",
    "vary-miss": "stored responses exist, none for this request's Vary variant (RFC 9111 §4.1)",
    "stale": "stored response is stale (RFC 9111 §4.2)",
    "request": "the request's Cache-Control (no-cache, max-age, min-fresh) refuses the "
    "stored response (RFC 9111 §5.2.1)",
}


def describe_decision(decision: Decision) -> str:
    """The cache's lookup verdict and the rule behind it (``decisions.lookup_decision``)."""
    action = decision.action.value
    if action == "bypass":
        rule = _BYPASS_RULES.get(decision.detail or "", decision.detail or "")
        return f"BYPASS: {rule}"
    if action in ("hit", "not-modified"):
        entry = decision.entry
        lifetime = entry.freshness_lifetime if entry is not None else 0.0
        if decision.detail == "max-stale":
            why = "stale but within the request's max-stale (RFC 9111 §4.2.4)"
        else:
            kind = "heuristic " if entry is not None and entry.heuristic else ""
            why = (
                f"fresh: age {decision.age:.0f} s < {kind}lifetime {lifetime:.0f} s (RFC 9111 §4.2)"
            )
        label = "HIT" if action == "hit" else "HIT as 304 to the client's conditional (§4.3.2)"
        return f"{label}: {why}"
    if action == "swr":
        return (
            "STALE served, refreshed in the background: within stale-while-revalidate (RFC 5861 §3)"
        )
    if action == "only-if-cached":
        return "MISS with only-if-cached: 504 without asking the upstream (RFC 9111 §5.2.1.7)"
    rule = _FWD_RULES.get(decision.fwd or "", decision.fwd or "")
    if action == "revalidate":
        return f"REVALIDATE: {rule}; it has a validator, so a conditional request (RFC 9111 §4.3.1)"
    return f"MISS: {rule}"


# why_not_storable's reasons -> the rule, with its RFC section.
STORE_RULES = {
    "method": "only GET responses are stored",
    "status": "status not cacheable without explicit freshness (RFC 9111 §3, §4.2.2)",
    "request-no-store": "the request said Cache-Control: no-store (RFC 9111 §5.2.1.5)",
    "must-understand": "must-understand with a status this cache does not know (RFC 9111 §5.2.2.3)",
    "no-store": "response Cache-Control: no-store (RFC 9111 §5.2.2.5)",
    "private": "response Cache-Control: private; this is a shared cache (RFC 9111 §5.2.2.7)",
    "set-cookie": 'Set-Cookie without no-cache="Set-Cookie" (never replayed to others)',
    "authorization": "request had Authorization; response lacks public/s-maxage/"
    "must-revalidate (RFC 9111 §3.5)",
    "vary-star": "Vary: * (RFC 9111 §4.1)",
    "invalid-freshness": "max-age/s-maxage is not a valid number (RFC 9111 §4.2.1)",
    "no-explicit-freshness": "no max-age, s-maxage, Expires or Last-Modified (RFC 9111 §4.2.2)",
    "stale-without-validator": "already stale and no ETag/Last-Modified to revalidate with",
    "too-large": "larger than max_entry_bytes",
}


def pass_text(method: str) -> str:
    """Why a lookup miss is forwarded with nothing to store (``CacheLayer._pass``)."""
    if method == "HEAD":
        return "forwarded as is: only a GET's response is stored (HEAD is answered from one)"
    return (
        "hit-for-pass: this URL's last response was not storable, so nothing is stored and"
        " the request waits for no other (Varnish's hit-for-pass)"
    )


def store_text(status: int, reason: str | None) -> str:
    if reason is None:
        return f"stored: the {status} response is storable (RFC 9111 §3)"
    return f"not stored: {STORE_RULES.get(reason, reason)}"


# --- upstream ------------------------------------------------------------------------------------


def choice_text(upstream: Upstream, server: Any, tried: Iterable[Any]) -> str:
    """The balancer's pick and the servers it skipped as DOWN (``Upstream.choose``)."""
    down = [s.address for s in upstream.health if not upstream.is_up(s)]
    up = len(upstream.health) - len(down)
    already = [s.address for s in tried if s != server]
    text = f"server {server.address} chosen: round robin over {up} UP of {len(upstream.health)}"
    text += f" in {upstream.name!r}"
    text += f"; skipped as DOWN: {', '.join(down)}" if down else "; none DOWN"
    if already:
        text += f"; already tried: {', '.join(already)}"
    return text


def pool_text(address: str, reused: bool, requests: int) -> str:
    if reused:
        return f"pooled keep-alive connection to {address} reused (request #{requests + 1} on it)"
    return f"new connection to {address} dialled (none idle in the pool)"


def retry_text(address: str, message: str, retrying: bool, facts: Mapping[str, Any]) -> str:
    """``retry.may_retry``'s verdict on a failed attempt, with the facts it looked at."""
    if retrying:
        return f"attempt on {address} failed ({message}); retrying on another server"
    why = ", ".join(f"{k}={v}" for k, v in facts.items())
    return f"attempt on {address} failed ({message}); not retried ({why})"
