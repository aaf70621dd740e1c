"""Hot hits (gateway.cache.hot): the bytes are the full path's, and every reason to leave the
answer to the full path (request, entry, store, certificate, time) is honoured."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.recording_transport import RecordingTransport
from support.response_cycle import response_cycle

from gateway.access_log import Exchange
from gateway.admin.metrics import Metrics
from gateway.cache import hot as hot_module
from gateway.cache.decisions import Action, format_cache_status, lookup_decision
from gateway.cache.fields import format_http_date
from gateway.cache.hot import INERT_FIELDS, MAX_ENTRIES, REFRESH, HotHits, plain_host
from gateway.cache.store import ResponseCache
from gateway.cache.stores.memory import MemoryStore
from gateway.cache.storing import StoredResponse, make_stored_response
from gateway.http1_cycle import STATUS_LINE

T0 = 1_700_000_000.0
EXTRA = [(b"via", b"1.1 gateway"), (b"strict-transport-security", b"max-age=63072000")]
REQUEST = [(b"host", b"app.localhost"), (b"user-agent", b"curl/8"), (b"accept", b"*/*")]
LABELS = ("/", "app")


class Log:
    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def write(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def stored(
    *headers: tuple[bytes, bytes], status: int = 200, body: bytes = b"hello"
) -> StoredResponse:
    fields = [(b"date", format_http_date(T0)), *headers]
    return make_stored_response(status, fields, body, REQUEST, T0, T0)


def scope(headers: list[tuple[bytes, bytes]] = REQUEST, **changes: Any) -> dict[str, Any]:
    base = {
        "method": "GET",
        "http_version": "1.1",
        "headers": headers,
        "raw_path": b"/page",
        "query_string": b"q=1",
        "gateway.sni": "app.localhost",
        "gateway.cert_names": ("localhost", "*.localhost"),
    }
    return base | changes


def exchange_for(entry: StoredResponse) -> Exchange:
    exchange = Exchange(scope())
    exchange.status = entry.status
    return exchange


class Hot:
    """A HotHits on a memory store, with a fake access log, a clock and fixed request IDs."""

    def __init__(self) -> None:
        self.store = MemoryStore(ResponseCache(1 << 20, 1 << 20))
        self.log = Log()
        self.metrics = Metrics()
        self.clock = Clock()
        self.hits = HotHits(
            self.store,
            EXTRA,
            self.log,  # type: ignore[arg-type]
            self.metrics,
            lambda: "0123456789abcdef0123456789abcdef",
            STATUS_LINE,
            clock=self.clock,
        )

    def publish(self, entry: StoredResponse, **changes: Any) -> None:
        self.hits.publish(scope(**changes), entry, exchange_for(entry), LABELS)

    def serve(
        self,
        headers: list[tuple[bytes, bytes]] = REQUEST,
        target: bytes = b"/page?q=1",
        sni: str | None = "app.localhost",
        cert_names: tuple[str, ...] | None = ("localhost", "*.localhost"),
    ) -> tuple[bytes, bytes] | None:
        return self.hits.serve(sni, cert_names, target, headers, ("127.0.0.1", 5000), 0.0)


def full_path_bytes(entry: StoredResponse, now: float, method: str, close: bool) -> bytes:
    """What the full path writes for this fresh hit: the cache's answer, then ClientSend's
    fields, written by the listener's own GatewayCycle."""
    decision = lookup_decision(entry, method, REQUEST, now)
    assert decision.action is Action.HIT and decision.answer is not None
    fields = [
        *decision.answer.headers,
        *EXTRA,
        (b"x-request-id", b"0123456789abcdef0123456789abcdef"),
    ]
    transport = RecordingTransport()
    cycle = response_cycle(transport, method, keep_alive=not close)  # no server-wide fields

    async def write() -> None:
        await cycle.send(
            {"type": "http.response.start", "status": decision.answer.status, "headers": fields}
        )
        await cycle.send({"type": "http.response.body", "body": decision.answer.body})

    asyncio.run(write())
    return b"".join(transport.written)


@given(
    elapsed=st.floats(min_value=0.0, max_value=0.99),
    initial_age=st.integers(min_value=0, max_value=100),
    heuristic=st.booleans(),
    method=st.sampled_from(["GET", "HEAD"]),
    close=st.booleans(),
)
def test_the_answer_is_the_full_paths_byte_for_byte(
    elapsed: float, initial_age: int, heuristic: bool, method: str, close: bool
) -> None:
    hot = Hot()
    if heuristic:  # a heuristic lifetime is marked in Cache-Status
        entry = stored(
            (b"last-modified", format_http_date(T0 - 86400 * 10)), (b"age", b"%d" % initial_age)
        )
    else:
        entry = stored((b"cache-control", b"max-age=600"), (b"age", b"%d" % initial_age))
    hot.publish(entry)
    hot.clock.now = T0 + elapsed
    answer = hot.hits.serve(
        "app.localhost",
        ("localhost", "*.localhost"),
        b"/page?q=1",
        REQUEST,
        ("127.0.0.1", 5000),
        0.0,
        method=method,
        close=close,
    )
    assert answer is not None
    assert answer[0] + answer[1] == full_path_bytes(entry, T0 + elapsed, method, close)
    assert answer[1] == (b"" if method == "HEAD" else b"hello")
    assert hot.log.exchanges[-1].line == (method, "/page?q=1")


def test_the_access_log_and_the_metrics_see_a_hit() -> None:
    hot = Hot()
    hot.publish(stored((b"cache-control", b"max-age=60")))
    assert hot.serve() is not None
    (exchange,) = hot.log.exchanges
    assert (exchange.status, exchange.bytes_sent, exchange.cache) == (200, 5, "HIT")
    assert exchange.line == ("GET", "/page?q=1")
    assert exchange.request_id == "0123456789abcdef0123456789abcdef"
    assert hot.metrics.cache == {"HIT": 1} and hot.metrics.hot_hits == 1
    assert hot.metrics.requests == {("/", "app", 200): 1}


@pytest.mark.parametrize(
    "changes",
    [
        {"method": "HEAD"},
        {"http_version": "1.0"},
        {"gateway.target": b"https://app.localhost/page?q=1"},
        {"headers": [*REQUEST, (b"cache-control", b"max-age=0")]},
        {"headers": [*REQUEST, (b"authorization", b"Basic eDp5")]},
        {"headers": [*REQUEST, (b"if-none-match", b'"v1"')]},
        {"headers": [*REQUEST, (b"x-request-id", b"abc")]},
        {"headers": [*REQUEST, (b"host", b"other.localhost")]},
    ],
)
def test_only_plain_requests_are_published(changes: dict[str, Any]) -> None:
    hot = Hot()
    hot.publish(stored((b"cache-control", b"max-age=60")), **changes)
    assert hot.hits.entries == {}


def test_responses_with_vary_or_another_status_are_not_published() -> None:
    hot = Hot()
    hot.publish(stored((b"cache-control", b"max-age=60"), (b"vary", b"accept-encoding")))
    entry = stored((b"cache-control", b"max-age=60"))
    exchange = exchange_for(entry)
    exchange.status = 304  # the full path answered something else than the entry
    hot.hits.publish(scope(), entry, exchange, LABELS)
    assert hot.hits.entries == {}


@pytest.mark.parametrize(
    "request_headers",
    [
        [*REQUEST, (b"pragma", b"no-cache")],
        [*REQUEST, (b"range", b"bytes=0-1")],
        [*REQUEST, (b"via", b"1.1 gateway")],
        [*REQUEST, (b"content-length", b"0")],
        [(b"user-agent", b"curl/8")],  # no Host
        [*REQUEST, (b"host", b"app.localhost")],  # two
    ],
)
def test_requests_that_are_not_plain_take_the_full_path(
    request_headers: list[tuple[bytes, bytes]],
) -> None:
    hot = Hot()
    hot.publish(stored((b"cache-control", b"max-age=60")))
    assert hot.serve(request_headers) is None
    assert hot.serve() is not None  # the entry itself is still good


def test_the_key_is_server_name_host_and_target_exactly() -> None:
    hot = Hot()
    hot.publish(stored((b"cache-control", b"max-age=60")))
    assert hot.serve(target=b"/page?q=2") is None
    assert hot.serve(target=b"/page?q=1&") is None
    assert hot.serve(sni="localhost") is None
    assert hot.serve([(b"host", b"APP.localhost")]) is None
    assert hot.serve() is not None


def test_other_certificate_names_take_the_full_path() -> None:
    hot = Hot()
    hot.publish(stored((b"cache-control", b"max-age=60")))
    assert hot.serve(cert_names=("app.localhost",)) is None
    assert hot.hits.entries == {}  # dropped: the full path publishes again


def test_a_stale_entry_takes_the_full_path() -> None:
    hot = Hot()
    hot.publish(stored((b"cache-control", b"max-age=60"), (b"age", b"59")))
    hot.clock.now = T0 + 0.999
    assert hot.serve() is not None
    hot.clock.now = T0 + 1.0  # age 60 = lifetime: stale (RFC 9111 §4.2)
    assert hot.serve() is None


def test_any_change_to_the_store_takes_the_full_path() -> None:
    hot = Hot()
    hot.publish(stored((b"cache-control", b"max-age=60")))
    hot.store.cache.invalidate("https://elsewhere/")  # nothing there: no change
    assert hot.serve() is not None
    hot.store.cache.put("https://app.localhost/other", stored((b"cache-control", b"max-age=9")))
    assert hot.serve() is None
    assert hot.hits.entries == {}


def test_the_full_path_serves_each_key_again_after_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hot = Hot()
    now = [100.0]
    monkeypatch.setattr("gateway.cache.hot.time.monotonic", lambda: now[0])
    hot.publish(stored((b"cache-control", b"max-age=60")))
    now[0] += REFRESH - 0.01
    assert hot.serve() is not None
    now[0] += 0.01
    assert hot.serve() is None


def test_the_table_is_bounded() -> None:
    hot = Hot()
    entry = stored((b"cache-control", b"max-age=60"))
    for i in range(MAX_ENTRIES + 5):
        hot.publish(entry, raw_path=b"/p%d" % i)
    assert 0 < len(hot.hits.entries) <= MAX_ENTRIES
    assert hot.hits.bytes == 5 * len(hot.hits.entries)


def test_a_failure_turns_hot_hits_off() -> None:
    hot = Hot()
    hot.publish(stored((b"cache-control", b"max-age=60")))
    hot.hits.fail()
    assert hot.serve() is None
    hot.publish(stored((b"cache-control", b"max-age=60")))
    assert hot.hits.entries == {}


def test_plain_host() -> None:
    assert plain_host(REQUEST) == b"app.localhost"
    assert plain_host([(b"host", b"a"), (b"x-custom", b"1")]) is None
    assert plain_host([]) is None
    # Nothing the cache rules read is inert.
    read_by_the_rules = {b"cache-control", b"pragma", b"range", b"if-range", b"if-match"}
    read_by_the_rules |= {b"if-none-match", b"if-modified-since", b"if-unmodified-since"}
    read_by_the_rules |= {b"authorization", b"via", b"x-request-id", b"content-length"}
    read_by_the_rules |= {b"transfer-encoding", b"expect", b"max-forwards", b"forwarded"}
    assert not INERT_FIELDS & read_by_the_rules


def head_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:-2]  # no status line, no blank line at the end
    return [tuple(line.split(b": ", 1)) for line in lines]  # type: ignore[misc]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_http2_gets_the_same_fields_in_the_same_order(method: str) -> None:
    hot = Hot()
    hot.publish(stored((b"cache-control", b"max-age=600"), (b"etag", b'"v1"')))
    hot.clock.now = T0 + 3
    ask = ("app.localhost", ("localhost", "*.localhost"), b"/page?q=1", REQUEST, None, 0.0)
    served = hot.hits.serve(*ask, method=method)
    answer = hot.hits.serve_fields(*ask, method=method, max_body=1 << 20)
    assert served is not None and answer is not None
    head, body = served
    status, fields, h2_body = answer
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert fields == head_fields(head) and h2_body == body
    first, second = hot.log.exchanges
    assert (first.scope["http_version"], second.scope["http_version"]) == ("1.1", "2")
    assert second.line == (method, "/page?q=1") and second.bytes_sent == len(body)
    assert hot.metrics.hot_hits == 2


def test_an_http2_body_over_the_clients_window_is_left_to_the_full_path() -> None:
    hot = Hot()
    hot.publish(stored((b"cache-control", b"max-age=60")))  # a 5-byte body
    cert_names = ("localhost", "*.localhost")
    ask = ("app.localhost", cert_names, b"/page?q=1", REQUEST, None, 0.0)
    assert hot.hits.serve_fields(*ask, max_body=4) is None
    assert hot.log.exchanges == [] and hot.metrics.hot_hits == 0  # nothing logged for it
    assert hot.hits.serve_fields(*ask, method="HEAD", max_body=0) is not None
    assert hot.hits.serve_fields(*ask, max_body=5) is not None
    assert hot.metrics.hot_hits == 2


def test_http2_requests_publish_too() -> None:
    hot = Hot()
    hot.publish(stored((b"cache-control", b"max-age=60")), http_version="2")
    assert list(hot.hits.entries) == [("app.localhost", b"app.localhost", b"/page?q=1")]


@pytest.mark.parametrize("ttl", [0.2, 1.0, 59.99, 3600.0, 1e9])
def test_the_hit_cache_status_is_the_full_paths(ttl: float) -> None:
    """The hot path's Cache-Status, completed from constants, is ``format_cache_status``'s."""
    assert hot_module.HIT % math.floor(ttl) == format_cache_status(hit=True, ttl=ttl)
    assert hot_module.HIT_HEURISTIC % math.floor(ttl) == format_cache_status(
        hit=True, ttl=ttl, detail="heuristic"
    )
