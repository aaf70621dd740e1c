"""``CacheLayer`` driven in-process: a fake ``forward`` stands in for the proxy (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.access_log import Exchange
from gateway.app import ClientSend
from gateway.asgi import INTERIM
from gateway.cache.layer import CacheLayer
from gateway.config import CacheSettings
from gateway.errors import GatewayError, UpstreamConnectError
from gateway.headers import Headers
from gateway.request import Request
from gateway.routing import Route
from gateway.validation import RequestFacts

EXTRA: Headers = [(b"via", b"1.1 gateway"), (b"strict-transport-security", b"max-age=60")]
HOST = "cache.test"
FACTS = RequestFacts(HOST, HOST, None, False)
ROUTE = Route("/", "origin")
NOW = 1_700_000_000.0


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 5))


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(10):
        await asyncio.sleep(0)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Reply:
    status: int = 200
    headers: Headers = field(default_factory=list)
    chunks: Sequence[bytes] = (b"hello",)


@dataclass
class Seen:
    method: str
    path: bytes
    headers: Headers

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)


class Origin:
    """The fake upstream behind the fake forward: counts requests, answers with ``reply``
    (a ``Reply``, an exception to raise, or a function of the request), optionally only
    once ``gate`` opens."""

    def __init__(self, reply: Reply | BaseException | Callable[[Seen], Reply] | None = None):
        self.reply: Reply | BaseException | Callable[[Seen], Reply] = reply or Reply(
            headers=[(b"cache-control", b"max-age=60")]
        )
        self.seen: list[Seen] = []
        self.gate: asyncio.Event | None = None
        self.between_chunks: asyncio.Event | None = None

    @property
    def count(self) -> int:
        return len(self.seen)

    async def forward(
        self, request: Request, send: Any, request_headers: Headers | None = None
    ) -> None:
        scope = request.scope
        seen = Seen(
            scope["method"],
            scope["raw_path"],
            list(scope["headers"] if request_headers is None else request_headers),
        )
        self.seen.append(seen)
        if self.gate is not None:
            await self.gate.wait()
        reply = self.reply
        if isinstance(reply, BaseException):
            raise reply
        if callable(reply):
            reply = reply(seen)
        headers = list(reply.headers)
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        chunks = list(reply.chunks) or [b""]
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
            if more and self.between_chunks is not None:
                await self.between_chunks.wait()


@dataclass
class Response:
    status: int
    headers: Headers
    body: bytes
    exchange: Exchange

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v.decode() for n, v in self.headers if n == name.encode()]


def make_layer(clock: Clock | None = None, **settings: Any) -> CacheLayer:
    return CacheLayer(CacheSettings(**settings), clock=clock or Clock(), lock_timeout=2)


async def request(
    layer: CacheLayer,
    origin: Origin,
    path: str = "/page",
    *,
    method: str = "GET",
    headers: Sequence[tuple[bytes, bytes]] = (),
    on_message: Callable[[dict[str, Any]], None] | None = None,
    facts: RequestFacts = FACTS,
) -> Response:
    raw_path, _, query = path.encode().partition(b"?")
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": raw_path.decode(),
        "raw_path": raw_path,
        "query_string": query,
        "headers": [(b"host", HOST.encode()), *headers],
        "client": ("127.0.0.1", 50000),
    }
    exchange = Exchange(scope)
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if on_message is not None:
            on_message(message)

    # The app's outer wrapper, as in production: it adds the gateway's own headers (EXTRA).
    client_send = ClientSend(send, exchange, EXTRA)
    await layer.handle(Request(scope, receive, client_send, facts, ROUTE, exchange), origin.forward)
    messages = [m for m in messages if m["type"] != INTERIM]  # 1xx: seen via on_message
    start = messages[0]
    assert start["type"] == "http.response.start"
    body = b"".join(m.get("body", b"") for m in messages[1:])
    assert not messages[-1].get("more_body", False), "the response never ended"
    return Response(start["status"], start["headers"], body, exchange)


def cacheable(cache_control: bytes = b"max-age=60", *extra: tuple[bytes, bytes]) -> Reply:
    return Reply(headers=[(b"cache-control", cache_control), *extra], chunks=(b"v1",))


# --- hits ------------------------------------------------------------------------------------


def test_a_fresh_hit_is_served_without_the_upstream() -> None:
    async def scenario() -> None:
        layer, origin = make_layer(), Origin(cacheable())
        first = await request(layer, origin)
        second = await request(layer, origin)
        assert origin.count == 1
        assert first.header("x-cache") == "MISS" and first.exchange.cache == "MISS"
        assert first.header("cache-status") == "gateway; fwd=uri-miss; fwd-status=200; stored"
        assert (second.status, second.body) == (200, b"v1")
        assert second.header("x-cache") == "HIT" and second.exchange.cache == "HIT"
        assert second.header("cache-status") == "gateway; hit; ttl=60"
        assert second.header("age") == "0"
        # The gateway's own headers appear once, not once stored and once added.
        assert second.all("via") == ["1.1 gateway"]
        assert second.all("strict-transport-security") == ["max-age=60"]
        assert second.header("content-length") == "2"
        exchange = second.exchange
        assert (exchange.status, exchange.bytes_sent, exchange.response_started) == (200, 2, True)
        assert exchange.upstream == "-"

    run(scenario())


def test_age_grows_with_the_clock() -> None:
    async def scenario() -> None:
        clock = Clock()
        layer, origin = make_layer(clock), Origin(cacheable(b"max-age=60", (b"age", b"5")))
        await request(layer, origin)
        clock.now += 10
        hit = await request(layer, origin)
        assert hit.header("age") == "15"  # 5 from the upstream plus 10 resident
        assert hit.header("cache-status") == "gateway; hit; ttl=45"
        clock.now += 50
        expired = await request(layer, origin)
        assert expired.header("x-cache") == "EXPIRED" and origin.count == 2

    run(scenario())


def test_head_is_answered_from_a_stored_get() -> None:
    async def scenario() -> None:
        layer, origin = make_layer(), Origin(cacheable())
        await request(layer, origin)
        head = await request(layer, origin, method="HEAD")
        assert origin.count == 1
        assert (head.status, head.body, head.header("content-length")) == (200, b"", "2")
        assert head.header("x-cache") == "HIT"

    run(scenario())


def test_a_client_conditional_gets_304_from_a_fresh_entry() -> None:
    async def scenario() -> None:
        layer = make_layer()
        origin = Origin(cacheable(b"max-age=60", (b"etag", b'"v1"')))
        await request(layer, origin)
        conditional = await request(layer, origin, headers=[(b"if-none-match", b'"v1"')])
        assert origin.count == 1
        assert (conditional.status, conditional.body) == (304, b"")
        assert conditional.header("etag") == '"v1"' and conditional.header("x-cache") == "HIT"

    run(scenario())


def test_vary_keeps_one_entry_per_variant() -> None:
    def by_encoding(seen: Seen) -> Reply:
        encoding = seen.header(b"accept-encoding") or b"identity"
        return Reply(
            headers=[(b"cache-control", b"max-age=60"), (b"vary", b"Accept-Encoding")],
            chunks=(b"body-" + encoding,),
        )

    async def scenario() -> None:
        layer, origin = make_layer(), Origin(by_encoding)
        gzip = [(b"accept-encoding", b"gzip")]
        br = [(b"accept-encoding", b"br")]
        assert (await request(layer, origin, headers=gzip)).body == b"body-gzip"
        second = await request(layer, origin, headers=br)
        assert second.body == b"body-br" and (second.header("cache-status") or "").startswith(
            "gateway; fwd=vary-miss"
        )
        assert (await request(layer, origin, headers=gzip)).body == b"body-gzip"
        assert (await request(layer, origin, headers=br)).body == b"body-br"
        assert origin.count == 2 and len(layer.store) == 2

    run(scenario())


# --- what is never shared --------------------------------------------------------------------


def test_an_authorized_response_never_reaches_an_anonymous_client() -> None:
    def personal(seen: Seen) -> Reply:
        user = seen.header(b"authorization") or b"anonymous"
        return Reply(headers=[(b"cache-control", b"max-age=60")], chunks=(b"for " + user,))

    async def scenario() -> None:
        layer, origin = make_layer(), Origin(personal)
        secret = await request(layer, origin, headers=[(b"authorization", b"Bearer alice")])
        assert secret.body == b"for Bearer alice"
        assert secret.header("cache-status") == "gateway; fwd=uri-miss; fwd-status=200"
        anonymous = await request(layer, origin)
        assert anonymous.body == b"for anonymous" and origin.count == 2

    run(scenario())


def test_set_cookie_is_never_replayed() -> None:
    async def scenario() -> None:
        layer = make_layer()
        origin = Origin(cacheable(b"public, max-age=60", (b"set-cookie", b"session=alice")))
        first = await request(layer, origin)
        assert first.header("set-cookie") == "session=alice"
        origin.reply = cacheable()
        second = await request(layer, origin)
        assert origin.count == 2 and second.header("set-cookie") is None

    run(scenario())


# --- request directives ----------------------------------------------------------------------


def test_only_if_cached_miss_is_504_without_the_upstream() -> None:
    async def scenario() -> None:
        layer, origin = make_layer(), Origin()
        answer = await request(layer, origin, headers=[(b"cache-control", b"only-if-cached")])
        assert answer.status == 504 and origin.count == 0
        assert answer.header("x-cache") == "MISS" and answer.all("via") == ["1.1 gateway"]

    run(scenario())


def test_request_no_cache_revalidates_and_no_store_bypasses() -> None:
    async def scenario() -> None:
        layer = make_layer()
        origin = Origin(cacheable(b"max-age=60", (b"etag", b'"v1"')))
        await request(layer, origin)
        origin.reply = Reply(304, [(b"etag", b'"v1"'), (b"cache-control", b"max-age=60")], ())
        forced = await request(layer, origin, headers=[(b"cache-control", b"no-cache")])
        assert origin.count == 2 and origin.seen[1].header(b"if-none-match") == b'"v1"'
        assert (forced.status, forced.body, forced.header("x-cache")) == (200, b"v1", "REVALIDATED")

        origin.reply = cacheable()
        bypass = await request(layer, origin, headers=[(b"cache-control", b"no-store")])
        assert origin.count == 3 and bypass.header("x-cache") == "BYPASS"
        assert bypass.exchange.cache == "BYPASS"

    run(scenario())


def test_a_get_with_a_body_bypasses_the_cache() -> None:
    async def scenario() -> None:
        layer, origin = make_layer(), Origin(cacheable())
        with_body = RequestFacts(HOST, HOST, 4, False)
        for _ in range(2):
            response = await request(layer, origin, facts=with_body)
            assert response.header("x-cache") == "BYPASS"
            assert response.header("cache-status") == "gateway; fwd=bypass; fwd-status=200"
        assert origin.count == 2 and len(layer.store) == 0

    run(scenario())


# --- coalescing ------------------------------------------------------------------------------


def test_100_concurrent_misses_make_one_upstream_request() -> None:
    async def scenario() -> None:
        layer, origin = make_layer(), Origin(cacheable())
        origin.gate = asyncio.Event()
        tasks = [asyncio.create_task(request(layer, origin)) for _ in range(100)]
        await settle()
        assert origin.count == 1
        origin.gate.set()
        responses = await asyncio.gather(*tasks)
        assert origin.count == 1
        assert all((r.status, r.body) == (200, b"v1") for r in responses)
        labels = sorted(r.exchange.cache for r in responses)
        assert labels == ["HIT"] * 99 + ["MISS"]

    run(scenario())


def test_waiters_go_upstream_themselves_when_the_leader_cannot_store() -> None:
    async def scenario() -> None:
        layer, origin = make_layer(), Origin(Reply(headers=[(b"cache-control", b"no-store")]))
        origin.gate = asyncio.Event()
        tasks = [asyncio.create_task(request(layer, origin)) for _ in range(10)]
        await settle()
        assert origin.count == 1  # the others wait for the leader
        origin.gate.set()
        responses = await asyncio.gather(*tasks)
        assert origin.count == 10
        assert all(r.status == 200 and r.header("x-cache") == "MISS" for r in responses)

        # Hit-for-pass: the next misses on this key do not wait for a leader at all.
        origin.gate = asyncio.Event()
        tasks = [asyncio.create_task(request(layer, origin)) for _ in range(5)]
        await settle()
        assert origin.count == 15
        origin.gate.set()
        await asyncio.gather(*tasks)

    run(scenario())


def test_a_failed_leader_lets_the_waiters_try() -> None:
    async def scenario() -> None:
        layer, origin = make_layer(), Origin(UpstreamConnectError("refused"))
        origin.gate = asyncio.Event()
        tasks = [asyncio.create_task(request(layer, origin)) for _ in range(3)]
        await settle()
        origin.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, UpstreamConnectError) for r in results)
        assert origin.count == 3 and len(layer.coalescer) == 0

    run(scenario())


# --- stale responses -------------------------------------------------------------------------


def test_stale_if_error_stands_in_for_an_unreachable_upstream() -> None:
    async def scenario() -> None:
        clock = Clock()
        layer, origin = make_layer(clock), Origin(cacheable(b"max-age=1, stale-if-error=60"))
        await request(layer, origin)
        clock.now += 10
        origin.reply = UpstreamConnectError("connection refused")
        stale = await request(layer, origin)
        assert (stale.status, stale.body, stale.header("x-cache")) == (200, b"v1", "STALE")
        assert stale.header("cache-status") == ("gateway; fwd=stale; ttl=-9; detail=stale-if-error")
        assert stale.exchange.cache == "STALE" and stale.exchange.status == 200

        clock.now += 100  # beyond the stale-if-error window: the error goes to the client
        with pytest.raises(UpstreamConnectError):
            await request(layer, origin)

    run(scenario())


def test_stale_if_error_hides_a_503_that_never_reaches_the_client() -> None:
    async def scenario() -> None:
        clock = Clock()
        layer, origin = make_layer(clock), Origin(cacheable(b"max-age=1, stale-if-error=60"))
        await request(layer, origin)
        clock.now += 10
        origin.reply = Reply(503, [(b"content-type", b"text/plain")], (b"down", b" for now"))
        stale = await request(layer, origin)
        assert (stale.status, stale.body) == (200, b"v1")
        assert "fwd-status=503" in (stale.header("cache-status") or "")
        assert stale.exchange.status == 200 and stale.exchange.bytes_sent == 2

        clock.now += 100
        error = await request(layer, origin)
        assert (error.status, error.body) == (503, b"down for now")
        assert error.header("x-cache") == "EXPIRED" and error.all("via") == ["1.1 gateway"]

    run(scenario())


def test_a_5xx_passes_straight_through_without_a_stale_candidate() -> None:
    async def scenario() -> None:
        layer = make_layer()
        origin = Origin(Reply(503, [], (b"a", b"b")))
        origin.between_chunks = asyncio.Event()
        started: list[int] = []
        task = asyncio.create_task(
            request(layer, origin, on_message=lambda m: started.append(m.get("status", 0)))
        )
        await settle()
        assert started[:1] == [503]  # not held back: nothing could replace it
        origin.between_chunks.set()
        assert (await task).body == b"ab"

    run(scenario())


def test_stale_while_revalidate_refreshes_once_in_the_background() -> None:
    async def scenario() -> None:
        clock = Clock()
        layer = make_layer(clock)
        origin = Origin(cacheable(b"max-age=1, stale-while-revalidate=60", (b"etag", b'"v1"')))
        await request(layer, origin)
        clock.now += 10
        origin.gate = asyncio.Event()
        origin.reply = Reply(
            headers=[(b"cache-control", b"max-age=60"), (b"etag", b'"v2"')], chunks=(b"v2",)
        )
        first = await request(layer, origin)
        second = await request(layer, origin)
        for stale in (first, second):
            assert (stale.body, stale.header("x-cache"), stale.exchange.cache) == (
                b"v1",
                "STALE",
                "STALE",
            )
        await settle()
        assert origin.count == 2  # one refresh, although two stale answers went out
        assert origin.seen[1].header(b"if-none-match") == b'"v1"'
        origin.gate.set()
        await settle()
        assert not layer._refreshes
        fresh = await request(layer, origin)
        assert (fresh.body, fresh.header("x-cache"), origin.count) == (b"v2", "HIT", 2)

    run(scenario())


def test_a_failing_background_refresh_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        clock = Clock()
        layer = make_layer(clock)
        origin = Origin(cacheable(b"max-age=1, stale-while-revalidate=60"))
        await request(layer, origin)
        clock.now += 10
        origin.reply = UpstreamConnectError("connection refused")
        stale = await request(layer, origin)
        assert stale.body == b"v1"
        await settle()
        assert origin.count == 2 and not layer._refreshes and len(layer.coalescer) == 0

    with caplog.at_level("DEBUG", logger="gateway.cache"):
        run(scenario())
    assert "background refresh failed: connection refused" in caplog.text
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "WARNING"]


# --- revalidation ----------------------------------------------------------------------------


def test_a_304_refreshes_the_stored_response() -> None:
    async def scenario() -> None:
        clock = Clock()
        layer = make_layer(clock)
        origin = Origin(cacheable(b"max-age=10", (b"etag", b'"v1"'), (b"x-version", b"1")))
        await request(layer, origin)
        clock.now += 30
        origin.reply = Reply(
            304, [(b"etag", b'"v1"'), (b"cache-control", b"max-age=10"), (b"x-version", b"2")], ()
        )
        revalidated = await request(layer, origin, headers=[(b"if-none-match", b'"other"')])
        # Our validator went upstream, not the client's.
        assert origin.seen[1].header(b"if-none-match") == b'"v1"'
        assert (revalidated.status, revalidated.body) == (200, b"v1")
        assert revalidated.header("x-cache") == "REVALIDATED"
        assert revalidated.header("x-version") == "2"
        assert revalidated.exchange.cache == "REVALIDATED"
        assert revalidated.exchange.status == 200 and revalidated.exchange.bytes_sent == 2
        hit = await request(layer, origin)
        assert (hit.header("x-cache"), hit.header("x-version"), origin.count) == ("HIT", "2", 2)

    run(scenario())


def test_a_304_for_another_validator_makes_a_full_refetch() -> None:
    def by_condition(seen: Seen) -> Reply:
        if seen.header(b"if-none-match") is not None:
            return Reply(304, [(b"etag", b'"v9"')], ())
        return Reply(
            headers=[(b"cache-control", b"max-age=10"), (b"etag", b'"v2"')], chunks=[b"v2"]
        )

    async def scenario() -> None:
        clock = Clock()
        layer = make_layer(clock)
        origin = Origin(cacheable(b"max-age=10", (b"etag", b'"v1"')))
        await request(layer, origin)
        clock.now += 30
        origin.reply = by_condition
        refetched = await request(layer, origin)
        assert (refetched.status, refetched.body, origin.count) == (200, b"v2", 3)
        assert (await request(layer, origin)).body == b"v2" and origin.count == 3

    run(scenario())


# --- invalidation ----------------------------------------------------------------------------


def test_unsafe_methods_invalidate_the_target_and_same_origin_locations() -> None:
    async def scenario() -> None:
        layer, origin = make_layer(), Origin(cacheable())
        for path in ("/items", "/items/7", "/other"):
            await request(layer, origin, path)
        assert len(layer.store) == 3

        origin.reply = Reply(
            201,
            [(b"location", b"/items/7"), (b"content-location", b"https://elsewhere.test/other")],
            (b"created",),
        )
        created = await request(layer, origin, "/items", method="POST")
        assert created.status == 201 and created.header("x-cache") == "BYPASS"
        assert f"https://{HOST}/items" not in layer.store
        assert f"https://{HOST}/items/7" not in layer.store  # the same-origin Location
        assert f"https://{HOST}/other" in layer.store  # another origin cannot invalidate it

        origin.reply = Reply(500, [], (b"oops",))
        await request(layer, origin, "/other", method="DELETE")
        assert len(layer.store) == 1  # an error response invalidates nothing

    run(scenario())


# --- size limits and streaming ---------------------------------------------------------------


def test_a_body_over_max_entry_bytes_streams_through_and_is_not_stored() -> None:
    async def scenario() -> None:
        layer = make_layer(max_entry_bytes=1000)
        chunks = [bytes([65 + i]) * 600 for i in range(3)]
        origin = Origin(Reply(headers=[(b"cache-control", b"max-age=60")], chunks=chunks))
        first = await request(layer, origin)
        assert first.body == b"".join(chunks)
        second = await request(layer, origin)
        assert second.body == b"".join(chunks) and origin.count == 2 and len(layer.store) == 0

    run(scenario())


def test_a_storable_body_reaches_the_client_while_it_streams() -> None:
    async def scenario() -> None:
        layer = make_layer()
        origin = Origin(Reply(headers=[(b"cache-control", b"max-age=60")], chunks=(b"a", b"b")))
        origin.between_chunks = asyncio.Event()
        received: list[bytes] = []

        def on_message(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                received.append(message["body"])

        task = asyncio.create_task(request(layer, origin, on_message=on_message))
        await settle()
        assert received == [b"a"] and len(layer.store) == 0  # stored only once complete
        origin.between_chunks.set()
        await task
        assert len(layer.store) == 1 and (await request(layer, origin)).body == b"ab"

    run(scenario())


def test_a_body_cut_short_is_not_stored() -> None:
    class Truncating(Origin):
        async def forward(self, request: Request, send: Any, *args: Any) -> None:
            self.seen.append(Seen(request.method, request.scope["raw_path"], []))
            headers = [(b"cache-control", b"max-age=60")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            raise UpstreamConnectError("reset mid-body")

    async def scenario() -> None:
        layer, origin = make_layer(), Truncating()
        with pytest.raises(GatewayError):
            await request(layer, origin)
        assert len(layer.store) == 0 and len(layer.coalescer) == 0

    run(scenario())


# --- RFC 9213 targeted fields, policy, interim responses, ranges (issue 15) ------------------


def test_rfc9213_our_targeted_field_decides_and_never_reaches_the_client() -> None:
    async def scenario() -> None:
        layer = make_layer()
        origin = Origin(
            Reply(
                headers=[(b"cache-control", b"no-store"), (b"cdn-cache-control", b"max-age=60")],
                chunks=(b"v1",),
            )
        )
        first = await request(layer, origin)
        second = await request(layer, origin)
        assert origin.count == 1 and second.header("x-cache") == "HIT"
        for response in (first, second):
            assert response.header("cdn-cache-control") is None
            assert response.header("cache-control") == "no-store"

    run(scenario())


@pytest.mark.parametrize(
    ("method", "request_headers"),
    [
        ("GET", [(b"range", b"bytes=0-1")]),  # a Range miss passes by the cache
        ("HEAD", []),  # HEAD with nothing stored passes by too
        ("POST", []),  # unsafe methods are forwarded with invalidation
    ],
)
def test_rfc9213_targeted_fields_are_stripped_on_every_forwarded_path(
    method: str, request_headers: Headers
) -> None:
    async def scenario() -> None:
        origin = Origin(Reply(headers=[(b"cdn-cache-control", b"max-age=60")], chunks=(b"x",)))
        response = await request(make_layer(), origin, method=method, headers=request_headers)
        assert origin.count == 1 and response.header("cdn-cache-control") is None

    run(scenario())


def test_the_configured_target_list_is_used() -> None:
    async def scenario() -> None:
        layer = make_layer(targeted_fields=("Gateway-Cache-Control",))
        origin = Origin(
            Reply(
                headers=[
                    (b"gateway-cache-control", b"max-age=60"),
                    (b"cdn-cache-control", b"no-store"),
                ],
                chunks=(b"v1",),
            )
        )
        await request(layer, origin)
        hit = await request(layer, origin)
        assert origin.count == 1 and hit.header("x-cache") == "HIT"
        # Not on our list: passed through to the caches downstream, stored with the response.
        assert hit.header("cdn-cache-control") == "no-store"
        assert hit.header("gateway-cache-control") is None

    run(scenario())


def test_heuristic_fraction_from_the_settings_reaches_the_stored_entry() -> None:
    async def scenario() -> None:
        clock = Clock()
        layer = make_layer(clock, heuristic_fraction=0.5)
        modified = (b"last-modified", b"Tue, 14 Nov 2023 21:13:20 GMT")  # NOW - 3600
        date = (b"date", b"Tue, 14 Nov 2023 22:13:20 GMT")  # NOW
        origin = Origin(Reply(headers=[modified, date], chunks=(b"v1",)))
        await request(layer, origin)
        clock.now += 1700  # within half of the hour since Last-Modified
        hit = await request(layer, origin)
        assert origin.count == 1
        assert hit.header("cache-status") == "gateway; hit; ttl=100; detail=heuristic"

    run(scenario())


class HintingOrigin(Origin):
    """An origin that sends 103 Early Hints before each response."""

    async def forward(
        self, request: Request, send: Any, request_headers: Headers | None = None
    ) -> None:
        await send({"type": INTERIM, "status": 103, "headers": [(b"link", b"</a.css>")]})
        await super().forward(request, send, request_headers)


def test_rfc9110_15_2_an_interim_response_passes_the_cache_and_is_not_stored() -> None:
    async def scenario() -> None:
        layer, origin = make_layer(), HintingOrigin(cacheable())
        seen: list[dict[str, Any]] = []
        first = await request(layer, origin, on_message=seen.append)
        assert seen[0] == {"type": INTERIM, "status": 103, "headers": [(b"link", b"</a.css>")]}
        assert first.body == b"v1" and "stored" in (first.header("cache-status") or "")
        seen.clear()
        hit = await request(layer, origin, on_message=seen.append)
        assert hit.header("x-cache") == "HIT" and hit.body == b"v1"
        assert [m["type"] for m in seen] == ["http.response.start", "http.response.body"]
        assert origin.count == 1

    run(scenario())


def test_a_range_on_a_stored_response_is_answered_by_the_layer() -> None:
    async def scenario() -> None:
        layer, origin = (
            make_layer(),
            Origin(Reply(headers=[(b"cache-control", b"max-age=60")], chunks=(b"hello",))),
        )
        await request(layer, origin)
        ranged = await request(layer, origin, headers=[(b"range", b"bytes=1-3")])
        assert (ranged.status, ranged.body) == (206, b"ell")
        assert ranged.header("content-range") == "bytes 1-3/5"
        assert ranged.exchange.cache == "HIT" and ranged.exchange.bytes_sent == 3
        assert origin.count == 1

    run(scenario())
