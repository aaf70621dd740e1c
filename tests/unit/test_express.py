"""The express lane (``gateway.express``) over in-memory transports: which requests it takes,
that its answers are the full path's byte for byte, and that everything it does not handle is
handed over mid-exchange without sending anything upstream twice."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.memory_listener import CLOSE, MemoryGateway, json_response

from gateway.handlers.proxy import HANDOFF_SCOPE_KEY, Handoff

BODY = b'{"status":"ok"}'
UNSTORABLE = json_response(BODY)  # no freshness information: the cache passes it by
REQUEST_ID = re.compile(rb"x-request-id: ([0-9a-f]{32})\r\n")


def config(**gateway: Any) -> dict[str, Any]:
    return {
        "gateway": {"hostnames": ["localhost"], **gateway},
        "upstreams": {
            "app": {"servers": ["http://127.0.0.1:9"], "read_timeout": 5.0},
            "two": {"servers": ["http://127.0.0.1:10", "http://127.0.0.1:11"]},
        },
        "routes": [
            {"path_prefix": "/", "upstream": "app"},
            {"path_prefix": "/nocache", "upstream": "app", "cache": False},
            {"path_prefix": "/two", "upstream": "two", "cache": False},
            {"path_prefix": "/wrapped", "upstream": "app", "middlewares": ["stamp"]},
        ],
        "middlewares": {"stamp": {"type": "headers", "response_set": {"x-stamp": "1"}}},
        "cache": {"enabled": True},
    }


def get(path: bytes, *fields: bytes, method: bytes = b"GET") -> bytes:
    extra = b"".join(field + b"\r\n" for field in fields)
    return b"%s %s HTTP/1.1\r\nhost: localhost\r\nuser-agent: t\r\n%s\r\n" % (method, path, extra)


def run(
    test: Callable[[MemoryGateway], Awaitable[None]],
    *,
    response: bytes = UNSTORABLE,
    express: bool = True,
    idle: int = 1,
    **gateway: Any,
) -> MemoryGateway:
    gw = MemoryGateway(config(**gateway), response)

    async def main() -> None:
        await gw.start(idle=idle)
        if not express:
            gw.app.express = None
        await test(gw)

    asyncio.run(main())
    return gw


def without_ids(data: bytes) -> bytes:
    return REQUEST_ID.sub(b"x-request-id: -\r\n", data)


def exchange_bytes(path: bytes, *fields: bytes, express: bool, **kw: Any) -> tuple[bytes, bytes]:
    """(what the client got, what the upstream got) for one request after a warm-up one."""
    result: dict[str, bytes] = {}

    async def test(gw: MemoryGateway) -> None:
        for _ in range(2):  # a miss makes the key hit-for-pass, a pass publishes it
            gw.send(get(path, *fields))
            await gw.response()
        del gw.server().requests[:]
        gw.send(get(path, *fields))
        result["client"] = await gw.response()
        result["upstream"] = b"".join(gw.server().requests)
        assert (gw.app.metrics.express > 0) is express

    run(test, express=express, **kw)
    return result["client"], result["upstream"]


@pytest.mark.parametrize("path", [b"/nocache/status", b"/status?x=1"])
def test_the_lane_answers_with_the_full_paths_bytes(path: bytes) -> None:
    lane_client, lane_upstream = exchange_bytes(path, express=True)
    full_client, full_upstream = exchange_bytes(path, express=False)
    assert lane_client.endswith(BODY)
    assert without_ids(lane_client) == without_ids(full_client)
    assert without_ids(lane_upstream) == without_ids(full_upstream)
    # The X-Request-ID the client gets is the one the upstream got.
    assert REQUEST_ID.findall(lane_client) == REQUEST_ID.findall(lane_upstream)


def test_a_cached_route_says_how_the_cache_passed_it() -> None:
    client, _ = exchange_bytes(b"/status", express=True)
    assert b"x-cache: MISS\r\n" in client
    assert b"cache-status: gateway; fwd=uri-miss; fwd-status=200\r\n" in client


def test_head_on_a_route_without_cache_is_on_the_lane() -> None:
    async def test(gw: MemoryGateway) -> None:
        gw.send(get(b"/nocache/status", method=b"HEAD"))
        answer = await gw.response()
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.endswith(b"\r\n\r\n")  # the head only
        assert b"content-length: %d\r\n" % len(BODY) in answer
        assert gw.app.metrics.express == 1
        assert gw.server().heads()[-1].startswith(b"HEAD /nocache/status HTTP/1.1\r\n")

    run(test, response=b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY))


@pytest.mark.parametrize(
    "request_bytes",
    [
        get(b"/status", method=b"HEAD"),  # HEAD on a caching route
        get(b"/status", b"cache-control: no-cache"),  # not plain: the cache would decide
        get(b"/wrapped/status"),  # middlewares
        get(b"/nocache/status", b"content-length: 2") + b"{}",  # a body
        b"GET /nocache/status HTTP/1.0\r\nhost: localhost\r\n\r\n",  # HTTP/1.0
        b"POST /nocache/status HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n",
        get(b"/nocache/%2e%2e/x"),  # refused by validation: the full path answers it
    ],
)
def test_requests_the_lane_leaves_to_the_full_path(request_bytes: bytes) -> None:
    async def test(gw: MemoryGateway) -> None:
        for _ in range(2):  # the second time, a caching route's key is hit-for-pass
            gw.send(request_bytes)
            answer = await gw.response()
            assert answer.startswith(b"HTTP/1.")
            if gw.client.closed:
                break
        assert gw.app.metrics.express == 0

    run(test)


def test_trace_mode_and_server_timing_turn_the_lane_off() -> None:
    for setting in ({"trace": True}, {"server_timing": True}):

        async def test(gw: MemoryGateway) -> None:
            assert gw.app.express is None

        run(test, **setting)


def test_a_store_change_sends_a_passed_key_back_to_the_full_path() -> None:
    async def test(gw: MemoryGateway) -> None:
        for _ in range(3):
            gw.send(get(b"/status"))
            await gw.response()
        assert gw.app.metrics.express == 1
        # Another key is stored: the store's generation moves, the decision is re-made.
        gw.server().script.append([json_response(BODY, b"cache-control: max-age=60\r\n")])
        gw.send(get(b"/other"))
        await gw.response()
        gw.send(get(b"/status"))
        await gw.response()
        assert gw.app.metrics.express == 1
        gw.send(get(b"/status"))  # the full path passed it again at the new generation
        await gw.response()
        assert gw.app.metrics.express == 2

    run(test)


def test_without_an_idle_pooled_connection_the_full_path_connects() -> None:
    async def test(gw: MemoryGateway) -> None:
        gw.send(get(b"/nocache/status"))
        assert (await gw.response()).endswith(BODY)
        assert gw.app.metrics.express == 0
        assert gw.upstreams["app"].pools[gw.upstreams["app"].settings.servers[0]].opened == 1
        gw.send(get(b"/nocache/status"))  # its connection went back to the pool
        assert (await gw.response()).endswith(BODY)
        assert gw.app.metrics.express == 1

    run(test, idle=0)


@pytest.mark.parametrize("idle", [0, 1])
def test_round_robin_alternates_on_and_off_the_lane(idle: int) -> None:
    """With no idle connection the lane hands its choice to the full path, which connects to
    that server: the round robin moves once per request either way."""

    async def test(gw: MemoryGateway) -> None:
        servers = [gw.servers[s.address] for s in gw.upstreams["two"].settings.servers]
        for _ in range(6):
            gw.send(get(b"/two/x"))
            await gw.response()
        assert [len(s.heads()) for s in servers] == [3, 3]
        assert gw.app.metrics.express == (6 if idle else 4)  # 2 connections opened first

    run(test, idle=idle)


def test_access_log_and_metrics_count_a_lane_request() -> None:
    async def test(gw: MemoryGateway) -> None:
        gw.send(get(b"/nocache/status"))
        await gw.response()
        (route, upstream, status), count = next(iter(gw.app.metrics.requests.items()))
        assert (route, upstream, status, count) == ("/nocache", "app", 200, 1)
        exchange = gw.app.metrics.recent[-1][0]
        assert exchange.upstream == "127.0.0.1:9"
        assert exchange.bytes_sent == len(BODY)
        assert exchange.request_id

    run(test)


# --- handovers: the full path carries the exchange on ------------------------------------


async def one_exchange(gw: MemoryGateway, path: bytes = b"/nocache/status") -> bytes:
    gw.send(get(path))
    answer = await gw.response()
    assert len(gw.server().heads()) == 1  # sent upstream once, whoever answered
    assert gw.app.metrics.express == 0
    return answer


def test_a_5xx_is_handed_over_and_reported_as_the_full_path_does() -> None:
    async def test(gw: MemoryGateway) -> None:
        gw.server().script.append(
            [b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"]
        )
        answer = await one_exchange(gw)
        assert answer.startswith(b"HTTP/1.1 503 ") and answer.endswith(b"busy")
        health = gw.upstreams["app"].health[gw.upstreams["app"].settings.servers[0]]
        assert health.last_error == "responded 503"

    run(test)


def test_a_large_body_is_handed_over_and_streamed() -> None:
    big = b"x" * (256 * 1024)
    pieces = [b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big)] + [
        big[i : i + 65536] for i in range(0, len(big), 65536)
    ]

    async def test(gw: MemoryGateway) -> None:
        gw.server().script.append(pieces)
        answer = await one_exchange(gw)
        assert answer.endswith(b"\r\n\r\n" + big)

    run(test)


def test_a_body_that_comes_in_pieces_is_answered_once_complete() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY)

    async def test(gw: MemoryGateway) -> None:
        gw.server().script.append([head, BODY[:5], BODY[5:]])
        gw.send(get(b"/nocache/status"))
        assert (await gw.response()).endswith(BODY)
        assert gw.app.metrics.express == 1

    run(test)


def test_early_hints_are_handed_over_and_relayed() -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"

    async def test(gw: MemoryGateway) -> None:
        gw.server().script.append([hints, UNSTORABLE])
        answer = await one_exchange(gw)
        assert answer.startswith(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n")
        assert b"HTTP/1.1 200 OK\r\n" in answer and answer.endswith(BODY)

    run(test)


def test_early_hints_read_with_the_final_response_are_relayed_too() -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"

    async def test(gw: MemoryGateway) -> None:
        gw.server().script.append([hints + UNSTORABLE])  # one read: the head is parsed too
        answer = await one_exchange(gw)
        assert answer.startswith(b"HTTP/1.1 103 Early Hints\r\n")
        assert answer.endswith(BODY)

    run(test)


def test_a_pooled_connection_closed_under_the_request_is_replaced_once() -> None:
    async def test(gw: MemoryGateway) -> None:
        gw.server().script.append([CLOSE])
        gw.send(get(b"/nocache/status"))
        answer = await gw.response()
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(BODY)
        assert len(gw.server().heads()) == 2  # the stale connection's, then a fresh one's
        assert gw.app.metrics.express == 0
        health = gw.upstreams["app"].health[gw.upstreams["app"].settings.servers[0]]
        assert health.last_error is None  # a keep-alive race says nothing about the server

    run(test)


def test_a_read_timeout_is_the_full_paths_504_with_one_upstream_request() -> None:
    async def test(gw: MemoryGateway) -> None:
        gw.server().script.append(None)
        gw.send(get(b"/nocache/status"))
        answer = await gw.response()
        assert answer.startswith(b"HTTP/1.1 504 ")
        assert len(gw.server().heads()) == 1
        assert gw.app.metrics.express == 0

    gw = MemoryGateway(config(), UNSTORABLE)
    gw.config["upstreams"]["app"]["read_timeout"] = 0.05

    async def main() -> None:
        await gw.start()
        await test(gw)

    asyncio.run(main())


class CountingLoop:
    """A connection's event loop that counts the timers armed on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.armed = 0

    def call_at(self, when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        self.armed += 1
        return self.loop.call_at(when, callback, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)


def test_a_busy_pooled_connection_arms_its_read_timer_once_not_per_request() -> None:
    async def test(gw: MemoryGateway) -> None:
        pool = gw.upstreams["app"].pools[gw.upstreams["app"].settings.servers[0]]
        (conn,) = pool._idle
        counting = conn.loop = CountingLoop(conn.loop)
        for path in (b"/nocache/status", b"/nocache/other", b"/status", b"/nocache/status"):
            gw.send(get(path))
            assert (await gw.response()).endswith(BODY)
        assert gw.server().connections == 1  # all four on this one connection
        assert counting.armed == 1

    run(test)


def test_a_read_timer_left_by_an_earlier_request_fires_no_earlier_than_the_new_deadline() -> None:
    """The second request's read timeout counts from its own start: the timer the first
    request left armed fires early and only moves on."""
    timeout = 0.2

    async def test(gw: MemoryGateway) -> None:
        gw.send(get(b"/nocache/status"))
        assert (await gw.response()).endswith(BODY)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(timeout / 2)
        gw.server().script.append(None)  # the second request is never answered
        started = loop.time()
        gw.send(get(b"/nocache/status"))
        answer = await gw.response()
        assert answer.startswith(b"HTTP/1.1 504 ")
        assert loop.time() - started >= timeout * 0.95

    gw = MemoryGateway(config(), UNSTORABLE)
    gw.config["upstreams"]["app"]["read_timeout"] = timeout

    async def main() -> None:
        await gw.start()
        await test(gw)

    asyncio.run(main())


def test_a_client_that_does_not_read_is_handed_over() -> None:
    async def test(gw: MemoryGateway) -> None:
        gw.client.paused = True
        gw.protocol.flow.pause_writing()
        gw.send(get(b"/nocache/status"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert gw.app.metrics.express == 0
        assert gw.client.data == b""  # the full path waits for the drain
        gw.client.paused = False
        gw.protocol.flow.resume_writing()
        assert (await gw.response()).endswith(BODY)
        assert len(gw.server().heads()) == 1

    run(test)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def test(gw: MemoryGateway) -> None:
        gw.send(get(b"/nocache/a") + get(b"/nocache/b") + get(b"/nocache/c"))
        answer = await gw.response()
        assert answer.count(b"HTTP/1.1 200 OK\r\n") == 3
        targets = [head.split(b" ")[1] for head in gw.server().heads()]
        assert targets == [b"/nocache/a", b"/nocache/b", b"/nocache/c"]
        assert gw.app.metrics.express == 3

    run(test)


def test_a_failing_lane_turns_itself_off_and_the_full_path_answers() -> None:
    async def test(gw: MemoryGateway) -> None:
        assert gw.app.express is not None

        def broken(*args: Any) -> Any:
            raise RuntimeError("bug")

        gw.app.proxy.upstream_headers = broken  # type: ignore[method-assign]
        gw.send(get(b"/nocache/status"))
        answer = await gw.response()
        assert answer.startswith(b"HTTP/1.1 5")  # the full path meets the same bug: 500
        assert gw.app.express.disabled

    run(test)


def test_a_handoff_nobody_carried_on_closes_its_connection() -> None:
    async def test(gw: MemoryGateway) -> None:
        upstream = gw.upstreams["app"]
        server = upstream.settings.servers[0]
        conn = upstream.pools[server]._idle.pop()
        handoff = Handoff(upstream, server, conn, 0.0, None)  # type: ignore[arg-type]
        assert handoff.take(gw.upstreams["two"]) is None  # another pool (a reload)
        handoff.drop()
        assert conn.transport is not None and conn.transport.is_closing()
        assert handoff.take(upstream) is None  # dropped: taken by nobody
        assert HANDOFF_SCOPE_KEY == "gateway.handoff"

    run(test)


def test_a_declined_request_is_validated_and_routed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The full path starts from the lane's validation and routing (``ROUTED_SCOPE_KEY``),
    but only its own app's: after a reload it validates and routes again."""
    import gateway.app
    import gateway.express

    calls: list[str] = []
    real = gateway.validation.check_request

    def counted(scope: Any, hosts: Any) -> Any:
        calls.append(scope["path"])
        return real(scope, hosts)

    monkeypatch.setattr(gateway.app, "check_request", counted)
    monkeypatch.setattr(gateway.express, "check_request", counted)

    async def test(gw: MemoryGateway) -> None:
        gw.send(get(b"/status", b"cache-control: no-cache"))  # routed, then declined
        assert (await gw.response()).endswith(BODY)
        assert calls == ["/status"]
        scope: dict[str, Any] = {}
        gw.app.express.start(_Cycle(scope), gw.protocol, gw.switch)  # type: ignore[union-attr]
        assert scope[gateway.express.ROUTED_SCOPE_KEY][0] is gw.app
        other = MemoryGateway(config(), UNSTORABLE)  # as after a reload
        await other.start()
        calls.clear()
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await other.app(scope, receive, send)  # type: ignore[arg-type]
        assert sent[0]["status"] == 200
        assert calls == ["/status"]  # the new app does not trust the old one's routing

    run(test)


class _Cycle:
    def __init__(self, scope: dict[str, Any]) -> None:
        scope.update(
            type="http",
            method="GET",
            http_version="1.1",
            path="/status",
            raw_path=b"/status",
            query_string=b"",
            headers=[(b"host", b"localhost"), (b"cache-control", b"no-cache")],
            client=("127.0.0.1", 1),
        )
        self.scope = scope


# --- the same bytes as the full path, for any response the lane answers ----------------------

FIELD_NAMES = ["content-type", "etag", "last-modified", "set-cookie", "x-app", "vary", "link"]


@st.composite
def upstream_responses(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(request method, an upstream's response to it) of a kind the lane may answer."""
    method = draw(st.sampled_from([b"GET", b"HEAD"]))
    status = draw(st.sampled_from([200, 201, 203, 204, 301, 302, 304, 400, 403, 404, 418, 499]))
    fields = draw(
        st.lists(
            st.tuples(
                st.sampled_from(FIELD_NAMES),
                st.text(alphabet="abcXYZ019 ;=/-", min_size=0, max_size=12).map(str.strip),
            ),
            max_size=5,
        )
    )
    body = draw(st.binary(max_size=300)) if status not in (204, 304) else b""
    framing = draw(st.sampled_from(["length", "chunked"]))
    head = b"HTTP/1.1 %d Whatever\r\n" % status
    head += b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in fields)
    if status in (204, 304):
        # A 304 may say the length its 200 would have; neither carries a body.
        declared = draw(st.sampled_from([b"", b"content-length: 42\r\n"]))
        wire = head + declared + b"\r\n"
    elif framing == "length" or method == b"HEAD":
        wire = head + b"content-length: %d\r\n\r\n" % len(body)
        wire += b"" if method == b"HEAD" else body
    else:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:100], body[100:]) if c)
        wire = head + b"transfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return method, wire


@settings(max_examples=60, deadline=None)
@given(upstream_responses(), st.booleans())
def test_any_answer_on_the_lane_is_the_full_paths_byte_for_byte(
    case: tuple[bytes, bytes], close: bool
) -> None:
    method, wire = case
    request = get(b"/nocache/x", *([b"connection: close"] if close else []), method=method)

    def answer(express: bool) -> tuple[bytes, int]:
        got: dict[str, Any] = {}

        async def test(gw: MemoryGateway) -> None:
            gw.server().script.append([wire])
            gw.send(request)
            got["client"] = await gw.response()
            got["lane"] = gw.app.metrics.express
            assert len(gw.server().heads()) == 1

        run(test, express=express)
        return without_ids(got["client"]), got["lane"]

    lane, used = answer(True)
    full, _ = answer(False)
    assert used == 1
    assert lane == full


# --- `pygateway explain` says what the lane will do ---------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "fields"),
    [
        ("GET", "/nocache/status", []),
        ("HEAD", "/nocache/status", []),
        ("GET", "/status", []),
        ("HEAD", "/status", []),
        ("GET", "/status", [(b"cache-control", b"no-cache")]),
        ("GET", "/wrapped/status", []),
        ("POST", "/nocache/status", [(b"content-length", b"0")]),
        ("GET", "/nocache/status", [(b"content-length", b"2")]),
    ],
)
def test_explain_says_whether_the_lane_takes_a_request(
    method: str, path: str, fields: list[tuple[bytes, bytes]]
) -> None:
    """``pygateway explain``'s express line agrees with the lane itself (after two requests
    made a caching route's key hit-for-pass, with an idle pooled connection)."""
    from gateway.explain import explain

    wire = b"%s %s HTTP/1.1\r\nhost: localhost\r\n" % (method.encode(), path.encode())
    wire += b"".join(b"%s: %s\r\n" % pair for pair in fields) + b"\r\n"
    wire += b"{}" if (b"content-length", b"2") in fields else b""
    taken: dict[str, int] = {}

    async def test(gw: MemoryGateway) -> None:
        if path == "/status":
            for _ in range(2):  # a GET's miss, then its pass: the key is hit-for-pass
                gw.send(get(b"/status"))
                await gw.response()
        before = gw.app.metrics.express
        gw.send(wire)
        await gw.response()
        taken["count"] = gw.app.metrics.express - before

    gw = run(test)
    lines = explain(gw.settings, method, f"https://localhost{path}", fields)
    express = [line.text for line in lines if line.step == "express"]
    assert len(express) == 1
    assert express[0].startswith("over HTTP/1.1") == (taken["count"] == 1), express[0]
