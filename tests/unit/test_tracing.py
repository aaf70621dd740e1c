"""Trace mode without sockets: the block's format, the stage texts made from the request path's
own decisions, the middleware stages, and ``GatewayApp`` in-process with trace on and off."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from gateway import tracing
from gateway.access_log import AccessLog, Exchange
from gateway.app import GatewayApp
from gateway.cache.decisions import Action, Decision, lookup_decision
from gateway.cache.storing import make_stored_response
from gateway.config import parse_settings
from gateway.request import Request
from gateway.routing import Route
from gateway.tracing import (
    STORE_RULES,
    TRACE_SCOPE_KEY,
    Trace,
    connection_text,
    describe_decision,
    format_trace,
    head_text,
    pass_text,
    route_text,
    store_text,
    trace_title,
    traced_middleware,
)

T0 = 1_000_000.0


def test_the_block_has_a_title_and_one_aligned_line_per_stage_with_offsets() -> None:
    trace = Trace(started=10.0)
    trace.add("gateway.listener", "connection accepted: new", at=10.0)
    trace.add("gateway.validation", "accepted", at=10.0005)
    trace.add("gateway.app", "final status 200", at=10.0123)
    title = trace_title("GET", "/x?y=1", 200, "abc", trace)
    assert title == "trace GET /x?y=1 -> 200 in 12.300 ms (id abc)"
    lines = format_trace(trace, title).splitlines()
    assert lines[0] == title
    assert lines[1] == "     +0.000 ms  gateway.listener    connection accepted: new"
    assert lines[2] == "     +0.500 ms  gateway.validation  accepted"
    assert lines[3] == "    +12.300 ms  gateway.app         final status 200"


def test_a_refusal_before_validation_passed_is_the_validations_verdict() -> None:
    trace = Trace()
    trace.failed(421, "MisdirectedRequest", "host 'x' is not served here")
    assert trace.stages[-1].module == "gateway.validation"
    trace.add("gateway.validation", "accepted")
    trace.failed(502, "UpstreamConnectError", "refused")
    assert trace.stages[-1].module == "gateway.errors"
    assert trace.stages[-1].text == "refused: 502 UpstreamConnectError: refused"


class FakeSSL:
    def version(self) -> str:
        return "TLSv1.3"

    def cipher(self) -> tuple[str, str, int]:
        return ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256)

    def selected_alpn_protocol(self) -> str | None:
        return "http/1.1"


def test_connection_text_says_new_or_reused_with_tls_version_and_cipher() -> None:
    new = connection_text(0, FakeSSL(), ("127.0.0.1", 5000))
    assert new == (
        "connection accepted: new, TLSv1.3 TLS_AES_256_GCM_SHA384 (ALPN http/1.1),"
        " client 127.0.0.1:5000"
    )
    reused = connection_text(2, None, None)
    assert reused.startswith("connection reused: request #3 on it (keep-alive), plain TCP")


def test_head_text_shows_the_request_line_as_sent() -> None:
    text = head_text("GET", b"/a%20b?q=1", "1.1", 3, 42)
    assert text == "head parsed: GET /a%20b?q=1 HTTP/1.1, 3 header fields, 42 bytes"
    assert "GET http://x/abs HTTP/1.0" in head_text("GET", b"http://x/abs", "1.0", 1, 9)


@pytest.mark.parametrize(
    ("route", "hostname", "why"),
    [
        (Route("/api", "app", hosts=("api.test",)), "api.test", "exact host rule 'api.test'"),
        (Route("/", "app", hosts=("*.p.test",)), "a.p.test", "wildcard host rule '*.p.test'"),
        (Route("/", "app"), "localhost", "no host rule (any served host)"),
    ],
)
def test_the_route_stage_says_why_the_route_won(route: Route, hostname: str, why: str) -> None:
    text = route_text(route, hostname, "/api/x", cached=True, websocket=False)
    assert why in text and "longest matching prefix" in text
    assert "proxy to upstream 'app', through the cache" in text


def _entry(*headers: tuple[bytes, bytes]) -> Any:
    return make_stored_response(200, list(headers), b"hi", [], T0, T0)


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (lookup_decision(None, "GET", [], T0), "MISS: no stored response for this URL"),
        (
            lookup_decision(_entry((b"cache-control", b"max-age=60")), "GET", [], T0 + 5),
            "HIT: fresh: age 5 s < lifetime 60 s (RFC 9111 §4.2)",
        ),
        (
            lookup_decision(
                _entry((b"cache-control", b"max-age=1"), (b"etag", b'"v"')), "GET", [], T0 + 5
            ),
            "REVALIDATE: stored response is stale (RFC 9111 §4.2); it has a validator",
        ),
        (
            lookup_decision(None, "GET", [(b"cache-control", b"no-store")], T0),
            "BYPASS: request Cache-Control: no-store (RFC 9111 §5.2.1.5)",
        ),
        (
            lookup_decision(None, "GET", [(b"if-match", b'"x"')], T0),
            "BYPASS: If-Match/If-Unmodified-Since only the origin can evaluate",
        ),
        (
            lookup_decision(None, "GET", [(b"cache-control", b"only-if-cached")], T0),
            "MISS with only-if-cached: 504",
        ),
        (
            lookup_decision(
                _entry((b"cache-control", b"max-age=1, stale-while-revalidate=60")),
                "GET",
                [],
                T0 + 5,
            ),
            "STALE served, refreshed in the background",
        ),
        (Decision(Action.BYPASS, fwd="bypass", detail="body"), "GET with a body"),
    ],
)
def test_the_cache_stage_names_the_rule_of_the_real_decision(
    decision: Decision, expected: str
) -> None:
    assert expected in describe_decision(decision)


def test_every_reason_why_not_storable_gives_has_a_rule() -> None:
    """The reasons are read off storing.py itself, so a new one cannot go unexplained."""
    source = Path(tracing.__file__).with_name("cache").joinpath("storing.py").read_text()
    reasons = set(re.findall(r'return "([a-z-]+)"', source)) | {"too-large"}
    assert reasons and reasons <= set(STORE_RULES)
    assert store_text(200, None) == "stored: the 200 response is storable (RFC 9111 §3)"
    assert store_text(200, "private").startswith("not stored: response Cache-Control: private")


class PassOn:
    applies_to_websocket = False

    def wrap(self, handler: Any) -> Any:
        async def wrapped(request: Any) -> None:
            await handler(request)

        return wrapped


class AnswerItself:
    applies_to_websocket = False

    def wrap(self, handler: Any) -> Any:
        async def wrapped(request: Any) -> None:
            request.exchange.status = 401

        return wrapped


def _request() -> Any:
    exchange = Exchange({"method": "GET", "path": "/", "headers": []})
    exchange.trace = Trace()
    return Request({}, None, None, None, None, exchange)  # type: ignore[arg-type]


def test_traced_middlewares_say_whether_they_passed_the_request_on() -> None:
    reached: list[str] = []

    async def handler(request: Any) -> None:
        reached.append("handler")

    chain = traced_middleware("outer", PassOn(), traced_middleware("auth", AnswerItself(), handler))
    request = _request()
    asyncio.run(chain(request))
    texts = [(s.module, s.text) for s in request.exchange.trace.stages]
    module = __name__
    assert texts == [
        (module, "outer (PassOn) entered"),
        (module, "outer: passed the request on"),
        (module, "auth (AnswerItself) entered"),
        (module, "auth: answered the request itself (401)"),
    ]
    assert reached == []


CONFIG: dict[str, Any] = {
    "gateway": {"hostnames": ["localhost"], "trace": True},
    "upstreams": {"app": {"servers": ["http://127.0.0.1:9"]}},
    "routes": [
        {"path_prefix": "/old", "redirect": "https://example.org"},
        {"path_prefix": "/api", "upstream": "app"},
    ],
}


def _call(app: GatewayApp, path: str, host: str = "localhost", trace: Trace | None = None) -> int:
    scope: dict[str, Any] = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", host.encode())],
        "client": ("127.0.0.1", 5000),
    }
    if trace is not None:
        scope[TRACE_SCOPE_KEY] = trace
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return int(sent[0]["status"])


def _app(trace: bool) -> GatewayApp:
    config = {**CONFIG, "gateway": {**CONFIG["gateway"], "trace": trace}}
    app = GatewayApp(parse_settings(config, Path("/srv/config.toml")), upstreams={})
    app.access_log = AccessLog(enabled=False)
    return app


def _blocks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.trace"]


def test_gateway_app_logs_one_block_per_request_with_stages_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.trace")
    app = _app(trace=True)
    listener_trace = Trace()
    listener_trace.add("gateway.listener", "connection accepted: new")
    assert _call(app, "/old/page", trace=listener_trace) == 308
    assert _call(app, "/nothing") == 404
    assert _call(app, "/", host="evil.test") == 421
    redirect, missing, foreign = _blocks(caplog)

    assert redirect.startswith("trace GET /old/page -> 308 in ")
    modules = [line.split()[2] for line in redirect.splitlines()[1:]]
    assert modules == ["gateway.listener", "gateway.validation", "gateway.routing", "gateway.app"]
    assert "route path_prefix='/old' chosen for '/old/page'" in redirect
    assert "redirect (gateway.handlers.redirect)" in redirect
    assert redirect.splitlines()[-1].endswith("final status 308, 21 body bytes sent")

    assert "gateway.errors" in missing and "404 NoRouteMatched: no route matches" in missing
    # No listener trace in the scope (trace mode turned on by a reload): the app starts one.
    assert missing.splitlines()[1].endswith(
        "gateway.app         request received: GET /nothing HTTP/1.1"
        " (connection stages need trace mode at start-up)"
    )
    assert "gateway.validation  refused: 421 MisdirectedRequest" in foreign


def test_with_trace_off_no_trace_is_made_and_nothing_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.trace")
    app = _app(trace=False)
    # A listener trace in the scope is ignored too: the app's own switch decides.
    assert _call(app, "/old/page", trace=Trace()) == 308
    assert _blocks(caplog) == []


def test_a_pass_says_why_nothing_is_stored() -> None:
    assert pass_text("HEAD").startswith("forwarded as is: only a GET's response is stored")
    assert pass_text("GET").startswith("hit-for-pass: this URL's last response was not storable")


def test_run_trace_survives_a_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pygateway run --trace`` forces trace mode for the process: a reload re-reads a file
    that does not set it, and trace mode stays on."""
    from gateway.runtime.reload import load_new_settings

    config = tmp_path / "config.toml"
    config.write_text('[upstreams.a]\nservers = ["http://127.0.0.1:9"]\n')
    assert load_new_settings(config).gateway.trace is False
    monkeypatch.setattr(tracing, "FORCED", True)
    assert load_new_settings(config).gateway.trace is True


def test_a_bad_trace_value_is_a_config_error_naming_file_key_and_value() -> None:
    from gateway.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_settings({"gateway": {"trace": "yes"}}, Path("/srv/config.toml"))
    message = "\n".join(caught.value.errors)
    assert "/srv/config.toml" in message and "trace" in message and "'yes'" in message
