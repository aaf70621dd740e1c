"""Trace mode end to end (``[gateway] trace = true``; ``pygateway run --trace`` sets the same):
a real gateway over real TLS logs one block per request, its stages in the order the request
went through them, each naming its module.  A proxied request (new connection, then reused),
a cache hit, a retry after a refused connect, a 404, and a gateway with trace off."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.harness import (
    PYTHON,
    READY_LINE,
    START_TIMEOUT,
    EchoUpstream,
    Gateway,
    ManagedProcess,
    Stack,
    StackConfig,
    TomlValue,
    echo_upstream,
    free_port,
    one_pool,
)
from e2e.harness import stack as start_stack

pytestmark = pytest.mark.e2e

STAGE = re.compile(r"^\s+\+\s*[\d.]+ ms  (\S+)\s+(.*)$")


def trace_block(gw: Gateway, request_id: str, timeout: float = 10.0) -> list[tuple[str, str]]:
    """The (module, text) stages of the block whose title carries ``request_id``, waiting for
    its last stage (the final status) to reach the log."""
    gw.wait_for_log(f"(id {request_id})", timeout)
    while True:
        lines = gw.process.lines
        start = next(i for i, line in enumerate(lines) if f"(id {request_id})" in line)
        stages: list[tuple[str, str]] = []
        for line in lines[start + 1 :]:
            match = STAGE.match(line)
            if match is None:
                break
            stages.append((match.group(1), match.group(2)))
        if stages and stages[-1][1].startswith("final status"):
            return stages
        # The block is one write; its last lines are still on their way through the reader.
        assert gw.process.wait_for_line("", timeout) is not None, gw.process.output()


def modules(stages: list[tuple[str, str]]) -> list[str]:
    return [module for module, _ in stages]


def text_of(stages: list[tuple[str, str]], module: str) -> str:
    return "\n".join(text for m, text in stages if m == module)


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    """Bound, never listening: connecting is refused, and no one else can take the port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, dead_port: int) -> Iterator[Stack]:
    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        rare_checks: dict[str, TomlValue] = {"health_interval": 60.0}
        return StackConfig(
            pools={
                "app": [upstreams["one"].url],
                "mixed": [f"http://127.0.0.1:{dead_port}", upstreams["one"].url],
            },
            pool_options={"app": rare_checks, "mixed": rare_checks},
            routes=[
                {"path_prefix": "/", "upstream": "app"},
                {"path_prefix": "/mixed", "upstream": "mixed", "strip_prefix": True},
                {"path_prefix": "/nocache", "upstream": "app", "cache": False},
                {"path_prefix": "/mw", "upstream": "app", "middlewares": ["hdr"]},
            ],
            gateway={"trace": True},
            middlewares={"hdr": {"type": "headers", "response_set": {"X-Traced": "yes"}}},
        )

    with start_stack(tmp_path_factory.mktemp("trace"), ["one"], build) as s:
        yield s


def test_a_proxied_request_new_then_reused_connection(traced: Stack) -> None:
    gw = traced.gateway
    with gw.client() as client:
        first = client.get("/echo?x=1")
        second = client.get("/echo?x=2")
    assert first.status_code == second.status_code == 200

    stages = trace_block(gw, first.headers["x-request-id"])
    assert modules(stages) == [
        "gateway.listener",
        "gateway.listener",
        "gateway.validation",
        "gateway.routing",
        "gateway.cache.decisions",
        "gateway.upstream.group",
        "gateway.upstream.pool",
        "gateway.handlers.proxy",
        "gateway.cache.storing",
        "gateway.handlers.proxy",
        "gateway.app",
    ]
    connection, head = stages[0][1], stages[1][1]
    assert re.match(
        r"connection accepted: new, TLSv1\.[23] \S+ \(ALPN http/1\.1\), client 127\.0\.0\.1:\d+",
        connection,
    )
    assert head.startswith("head parsed: GET /echo?x=1 HTTP/1.1, ")
    assert "Host 'localhost' is served" in text_of(stages, "gateway.validation")
    assert "route path_prefix='/' chosen for '/echo'" in text_of(stages, "gateway.routing")
    assert "through the cache" in text_of(stages, "gateway.routing")
    assert text_of(stages, "gateway.cache.decisions") == "MISS: no stored response for this URL"
    one = traced.upstreams["one"].url.removeprefix("http://")
    assert text_of(stages, "gateway.upstream.group").startswith(f"server {one} chosen")
    assert text_of(stages, "gateway.upstream.pool").startswith(f"new connection to {one} dialled")
    assert "upstream head received: 200" in text_of(stages, "gateway.handlers.proxy")
    assert "not stored: no max-age" in text_of(stages, "gateway.cache.storing")
    assert stages[-1][1] == f"final status 200, {len(first.content)} body bytes sent"
    title = gw.wait_for_log(f"(id {first.headers['x-request-id']})")
    assert "trace GET /echo?x=1 -> 200 in " in title

    again = trace_block(gw, second.headers["x-request-id"])
    assert again[0][1].startswith("connection reused: request #2 on it (keep-alive)")
    assert text_of(again, "gateway.upstream.pool").startswith(
        f"pooled keep-alive connection to {one} reused"
    )


def test_a_cache_hit_never_reaches_the_upstream_stages(traced: Stack) -> None:
    gw = traced.gateway
    with gw.client() as client:
        stored = client.get("/cache/trace-hit?cc=max-age%3D300")
        hit = client.get("/cache/trace-hit?cc=max-age%3D300")
    assert hit.headers["x-cache"] == "HIT"
    assert "stored: the 200 response is storable" in text_of(
        trace_block(gw, stored.headers["x-request-id"]), "gateway.cache.storing"
    )
    stages = trace_block(gw, hit.headers["x-request-id"])
    assert modules(stages) == [
        "gateway.listener",
        "gateway.listener",
        "gateway.validation",
        "gateway.routing",
        "gateway.cache.decisions",
        "gateway.app",
    ]
    assert re.fullmatch(
        r"HIT: fresh: age \d+ s < lifetime 300 s \(RFC 9111 §4\.2\)",
        text_of(stages, "gateway.cache.decisions"),
    )


def test_a_retry_and_then_the_down_server_skipped(traced: Stack, dead_port: int) -> None:
    """Round robin over a dead and a live server: the attempt on the dead one is refused and
    retried on the live one (both in the trace); the dead one is DOWN from then on and the
    balancer skips it."""
    gw = traced.gateway
    dead = f"127.0.0.1:{dead_port}"
    with gw.client() as client:
        responses = [client.get("/mixed/echo") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    blocks = [trace_block(gw, r.headers["x-request-id"]) for r in responses]
    retried = [b for b in blocks if "gateway.retry" in modules(b)]
    assert len(retried) == 1, blocks
    stages = retried[0]
    assert modules(stages)[5:9] == [
        "gateway.upstream.group",
        "gateway.retry",
        "gateway.upstream.group",
        "gateway.upstream.pool",
    ]
    assert stages[5][1].startswith(f"server {dead} chosen")
    assert text_of(stages, "gateway.retry").startswith(f"attempt on {dead} failed (")
    assert text_of(stages, "gateway.retry").endswith("retrying on another server")
    assert f"already tried: {dead}" in stages[7][1]
    assert f"skipped as DOWN: {dead}" in text_of(blocks[-1], "gateway.upstream.group")


def test_a_misdirected_request_is_the_validations_verdict(traced: Stack) -> None:
    gw = traced.gateway
    with gw.client() as client:
        misdirected = client.get("/echo", headers={"host": "elsewhere.test"})
    assert misdirected.status_code == 421
    stages = trace_block(gw, misdirected.headers["x-request-id"])
    assert modules(stages) == [
        "gateway.listener",
        "gateway.listener",
        "gateway.validation",
        "gateway.app",
    ]
    assert (
        "refused: 421 MisdirectedRequest: host 'elsewhere.test' is not served here" in stages[2][1]
    )


def test_a_404_from_the_router(tmp_path: Path) -> None:
    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        config: StackConfig = one_pool(path_prefix="/api", gateway={"trace": True})(upstreams)
        return config

    with start_stack(tmp_path, ["one"], build) as s, s.gateway.client() as client:
        response = client.get("/elsewhere")
        assert response.status_code == 404
        stages = trace_block(s.gateway, response.headers["x-request-id"])
    assert modules(stages) == [
        "gateway.listener",
        "gateway.listener",
        "gateway.validation",
        "gateway.errors",
        "gateway.app",
    ]
    assert stages[3][1] == "refused: 404 NoRouteMatched: no route matches localhost/elsewhere"
    assert stages[4][1].startswith("final status 404, ")


def test_trace_off_logs_no_block(tmp_path: Path) -> None:
    with start_stack(tmp_path, ["one"], one_pool()) as s, s.gateway.client() as client:
        response = client.get("/echo")
        assert response.status_code == 200
        s.gateway.wait_for_log(response.headers["x-request-id"])  # its access-log line
    assert not s.gateway.log_lines("gateway.trace")
    assert not s.gateway.log_lines("(id ")


def test_pygateway_run_trace_turns_it_on(tmp_path: Path) -> None:
    """``pygateway run --trace`` with a config that does not set ``trace``."""
    with echo_upstream("one") as upstream:
        config = one_pool()({"one": upstream})
        http_port, https_port = free_port(), free_port()
        config_path = tmp_path / "config.toml"
        config_path.write_text(config.render(tmp_path, http_port, https_port))
        argv = [PYTHON, "-m", "gateway", "run", "--trace", "--config", str(config_path)]
        process = ManagedProcess(argv)
        try:
            assert process.wait_for_line(READY_LINE, START_TIMEOUT), process.output()
            gw = Gateway(tmp_path, config_path, http_port, https_port, process)
            with gw.client() as client:
                response = client.get("/echo")
            stages = trace_block(gw, response.headers["x-request-id"])
        finally:
            process.stop()
    assert stages[0][1].startswith("connection accepted: new")
    assert stages[-1][1].startswith("final status 200")


def test_an_http2_stream_is_traced_from_its_connection(traced: Stack) -> None:
    gw = traced.gateway
    with gw.client(http2=True) as client:
        first = client.get("/echo?h2=1")
        second = client.get("/echo?h2=2")
    assert first.http_version == "HTTP/2"
    stages = trace_block(gw, first.headers["x-request-id"])
    assert modules(stages)[:3] == [
        "gateway.http2.protocol",
        "gateway.http2.protocol",
        "gateway.validation",
    ]
    assert re.match(
        r"connection accepted: new, TLSv1\.[23] \S+ \(ALPN h2\), client 127", stages[0][1]
    )
    assert stages[1][1] == "head parsed: GET /echo?h2=1 HTTP/2 (stream 1), 4 header fields"
    again = trace_block(gw, second.headers["x-request-id"])
    assert again[0][1] == "connection reused: stream #2 on it"
    assert again[1][1].startswith("head parsed: GET /echo?h2=2 HTTP/2 (stream 3)")


def test_a_middleware_is_entered_and_passes_the_request_on(traced: Stack) -> None:
    gw = traced.gateway
    with gw.client() as client:
        response = client.get("/mw/echo")
    assert response.headers["x-traced"] == "yes"
    stages = trace_block(gw, response.headers["x-request-id"])
    assert stages[3:6] == [
        ("gateway.routing", stages[3][1]),
        ("gateway.middleware.headers", "hdr (HeaderRules) entered"),
        ("gateway.middleware.headers", "hdr: passed the request on"),
    ]
    assert modules(stages)[6] == "gateway.cache.decisions"
