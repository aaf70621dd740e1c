"""``pygateway explain`` without sockets: a table of configs and requests and what it says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import Settings, parse_settings
from gateway.explain import ExplainError, build_scope, explain, format_lines, parse_header

T0 = 1_000_000.0
HERE = Path(__file__).parent

BASE: dict[str, Any] = {
    "gateway": {
        "hostnames": ["localhost", "api.localhost", "*.preview.localhost"],
        "https_port": 9443,
        "http_port": 9080,
    },
    "upstreams": {
        "web": {"servers": ["http://127.0.0.1:3000"]},
        "api": {
            "servers": ["http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003"],
            "health_path": "/healthz",
        },
    },
    "middlewares": {
        "gzip": {"type": "compress"},
        "hdr": {"type": "headers", "response_set": {"X-Frame-Options": "DENY"}},
    },
    "routes": [
        {"path_prefix": "/", "upstream": "web"},
        {
            "hosts": ["api.localhost"],
            "path_prefix": "/v1",
            "upstream": "api",
            "strip_prefix": True,
            "middlewares": ["hdr", "gzip"],
        },
        {"hosts": ["*.preview.localhost"], "path_prefix": "/", "upstream": "web", "cache": False},
        {"path_prefix": "/docs", "redirect": "https://docs.example.org", "strip_prefix": True},
        {"path_prefix": "/files", "static": "cache"},  # tests/unit/cache,
    ],
}


def settings(overrides: dict[str, Any] | None = None) -> Settings:
    config = {**BASE, **(overrides or {})}
    return parse_settings(config, HERE / "config.toml")


def run(
    url: str, *headers: str, method: str = "GET", config: dict[str, Any] | None = None
) -> dict[str, list[str]]:
    lines = explain(settings(config), method, url, [parse_header(h) for h in headers], now=T0)
    steps: dict[str, list[str]] = {}
    for line in lines:
        steps.setdefault(line.step, []).append(line.text)
    return steps


CASES: list[tuple[str, tuple[str, ...], str, dict[str, Any] | None, dict[str, list[str]]]] = [
    (
        "https://api.localhost:9443/v1/items?page=2",
        (),
        "GET",
        None,
        {
            "route": ["path_prefix='/v1'", "exact host rule 'api.localhost'"],
            "handler": ["proxy to upstream 'api', through the cache"],
            "middlewares": [
                "outermost first: hdr (headers)",
                "between the cache and the proxy: gzip (compress)",
            ],
            "upstream": [
                "#1 -> 127.0.0.1:8001, #2 -> 127.0.0.1:8002, #3 -> 127.0.0.1:8003,"
                " #4 -> 127.0.0.1:8001",
                "GET /healthz every 2 s",
                "request target sent upstream: GET /items?page=2",
            ],
            "cache": ["MISS: no stored response for this URL", "stored when the response allows"],
        },
    ),
    (
        "https://pr-7.preview.localhost:9443/",
        (),
        "GET",
        None,
        {"route": ["wildcard host rule '*.preview.localhost'"], "cache": ["off for this route"]},
    ),
    (
        "http://localhost:9080/a?b=1",
        (),
        "GET",
        None,
        {
            "listener": ["plain HTTP listener 127.0.0.1:9080"],
            "redirect": ["308 -> https://localhost:9443/a?b=1"],
            "route": ["path_prefix='/'", "no host rule"],
        },
    ),
    (
        "http://localhost:9080/",
        (),
        "GET",
        {"gateway": {**BASE["gateway"], "redirect_status": 301}},
        {"redirect": ["301 -> https://localhost:9443/"]},
    ),
    (
        "https://localhost:9443/docs/guide/x",
        (),
        "GET",
        None,
        {"handler": ["redirect"], "answer": ["308 -> https://docs.example.org/guide/x"]},
    ),
    (
        "https://localhost:9443/files/a.css",
        (),
        "GET",
        None,
        {"handler": ["static files"], "answer": [f"'/files/a.css' under {HERE / 'cache'}"]},
    ),
    (
        "https://evil.example:9443/",
        (),
        "GET",
        None,
        {"refused": ["421 MisdirectedRequest: host 'evil.example' is not served here"]},
    ),
    (
        "https://localhost:9443/a/../b",
        (),
        "GET",
        None,
        {"refused": ['400 RequestRejected: the path must not contain "." or ".." segments']},
    ),
    (
        "https://localhost:9443/",
        ("Content-Length: 5", "Transfer-Encoding: chunked"),
        "POST",
        None,
        {"refused": ["400 RequestRejected: both Content-Length and Transfer-Encoding"]},
    ),
    (
        "https://localhost:9443/",
        ("Content-Length: 99999999",),
        "POST",
        None,
        {"refused": ["413 ContentTooLarge"]},
    ),
    (
        "https://localhost:9443/",
        (),
        "TRACE",
        None,
        {"refused": ["405 MethodNotAllowed: TRACE is not allowed"]},
    ),
    (
        "https://api.localhost:9443/nope",
        (),
        "GET",
        {"routes": [BASE["routes"][1]]},
        {"refused": ["404 NoRouteMatched: no route matches api.localhost/nope"]},
    ),
    (
        "https://localhost:9443/x",
        ("Cache-Control: no-store",),
        "GET",
        None,
        {"cache": ["cache-control: no-store", "BYPASS: request Cache-Control: no-store"]},
    ),
    (
        "https://localhost:9443/x",
        ("Authorization: Bearer t",),
        "GET",
        None,
        {"cache": ["authorization: Bearer t", "only if the response says public"]},
    ),
    (
        "https://localhost:9443/x",
        (),
        "POST",
        None,
        {"cache": ["BYPASS: method is not GET/HEAD", "invalidates the URL"]},
    ),
    (
        "https://localhost:9443/x",
        ("Cache-Control: only-if-cached",),
        "GET",
        None,
        {"cache": ["only-if-cached: 504"]},
    ),
    (
        "https://localhost:9443/x",
        (),
        "GET",
        {"cache": {"enabled": False}},
        {"cache": ["off for the whole gateway"], "handler": ["proxy to upstream 'web' ("]},
    ),
    (
        "https://localhost:9443/chat",
        ("Connection: Upgrade", "Upgrade: websocket"),
        "GET",
        None,
        {"handler": ["WebSocket tunnel"], "upstream": ["GET /chat"]},
    ),
    (
        "https://localhost:9443/",
        ("Max-Forwards: 0",),
        "OPTIONS",
        None,
        {"answer": ["200 with Allow"]},
    ),
]


@pytest.mark.parametrize(("url", "headers", "method", "config", "expected"), CASES)
def test_explain(
    url: str,
    headers: tuple[str, ...],
    method: str,
    config: dict[str, Any] | None,
    expected: dict[str, list[str]],
) -> None:
    steps = run(url, *headers, method=method, config=config)
    for step, fragments in expected.items():
        assert step in steps, (step, steps)
        text = "\n".join(steps[step])
        for fragment in fragments:
            assert fragment in text, (fragment, text)
    if "refused" in steps:
        assert "route" not in steps  # nothing after a refusal


def test_refused_requests_stop_before_routing_and_accepted_ones_list_steps_in_order() -> None:
    steps = list(run("https://api.localhost:9443/v1/x"))
    assert steps == [
        "listener",
        "validation",
        "route",
        "handler",
        "middlewares",
        "upstream",
        "cache",
        "express",
    ]


def test_the_scope_is_the_listeners_shape() -> None:
    scope = build_scope("get", "https://localhost:9443/a%20b?x=1", [(b"accept", b"*/*")])
    assert scope["method"] == "GET" and scope["path"] == "/a b"
    assert scope["raw_path"] == b"/a%20b" and scope["query_string"] == b"x=1"
    assert scope["headers"][0] == (b"host", b"localhost:9443")
    given = build_scope("GET", "https://localhost/", [(b"host", b"other")])
    assert given["headers"] == [(b"host", b"other")]


@pytest.mark.parametrize("bad", ["no-colon", ": empty", "two words: x"])
def test_bad_headers_are_refused(bad: str) -> None:
    with pytest.raises(ExplainError):
        parse_header(bad)


def test_relative_urls_are_refused() -> None:
    with pytest.raises(ExplainError, match="must be absolute"):
        build_scope("GET", "/just/a/path", [])


def test_format_aligns_the_steps() -> None:
    text = format_lines(explain(settings(), "GET", "https://localhost:9443/", now=T0))
    first, second = text.splitlines()[:2]
    assert first.startswith("listener     HTTPS listener")
    assert second.startswith("validation   accepted")


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[gateway]\nhostnames = ["localhost"]\n[upstreams.app]\nservers = ["http://127.0.0.1:7"]\n'
        '[[routes]]\npath_prefix = "/"\nupstream = "app"\n'
    )
    code = main(
        [
            "explain",
            "--config",
            str(config),
            "-X",
            "HEAD",
            "-H",
            "Range: bytes=0-1",
            "https://localhost:8443/f",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(f"HEAD https://localhost:8443/f under {config} (nothing is sent)\n")
    assert "range: bytes=0-1" in out and "127.0.0.1:7" in out
    assert main(["explain", "--config", str(config), "-H", "bad", "https://localhost/"]) == 2
    assert "'bad' is not 'Name: value'" in capsys.readouterr().err
    assert main(["explain", "--config", str(tmp_path / "missing.toml"), "https://x/"]) == 1
