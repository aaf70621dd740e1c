"""The same table of store semantics run against every ``[cache] store``: memory, shared
(LMDB in a temp dir) and redis (a real ``redis-server``); then what only one of them does:
the codec, two processes' views of one shared store, coalescing across them, Redis outages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.redis_server import RedisServer, redis_server

from gateway.cache import codec
from gateway.cache.decisions import Action
from gateway.cache.policy import DEFAULT_POLICY
from gateway.cache.store import ResponseCache
from gateway.cache.stores import CacheStore, open_store
from gateway.cache.stores.lmdb_impl import SharedStore, SharedStoreError
from gateway.cache.stores.memory import MemoryStore
from gateway.cache.stores.redis_impl import RedisStore
from gateway.cache.storing import StoredResponse, make_stored_response
from gateway.config import CacheSettings
from gateway.headers import Headers

NOW = 1_700_000_000.0
KEY = "https://cache.test/page"
MAX = 1024 * 1024


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 10))


def entry(
    body: bytes = b"hello",
    headers: Headers | None = None,
    request_headers: Headers | None = None,
    at: float = NOW,
) -> StoredResponse:
    response = headers if headers is not None else [(b"cache-control", b"max-age=60")]
    return make_stored_response(200, response, body, request_headers or [], at, at)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


class StoreFactory:
    """Opens stores of one kind inside the test's event loop and closes them there."""

    def __init__(self, kind: str, directory: Path, redis: RedisServer) -> None:
        self.kind = kind
        self.directory = directory
        self.redis = redis
        self.made: list[CacheStore] = []

    async def __call__(self, max_bytes: int = MAX, max_entry_bytes: int = MAX // 2) -> CacheStore:
        name = self.kind
        if name == "redis":
            name = self.redis.url
        settings = CacheSettings(max_bytes=max_bytes, max_entry_bytes=max_entry_bytes, store=name)
        store = open_store(settings, self.directory / f"shared-{len(self.made)}")
        if isinstance(store, RedisStore):
            await store.client.flushdb()  # tests never see each other's entries
        self.made.append(store)
        return store

    async def close(self) -> None:
        for store in self.made:
            await store.aclose()


@pytest.fixture(params=["memory", "shared", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path, redis: RedisServer) -> StoreFactory:
    return StoreFactory(request.param, tmp_path, redis)


def run_with(factory: StoreFactory, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def closing() -> None:
        try:
            await scenario()
        finally:
            await factory.close()

    run(closing())


# --- the table: every store -------------------------------------------------------------------


def test_miss_then_hit(make_store: StoreFactory) -> None:
    async def scenario() -> None:
        store = await make_store()
        miss = await store.lookup(KEY, "GET", [], NOW)
        assert miss.action is Action.MISS and miss.fwd == "uri-miss" and miss.entry is None
        assert await store.put(KEY, entry(b"stored body"))
        hit = await store.lookup(KEY, "GET", [], NOW + 1)
        assert hit.action is Action.HIT and hit.answer is not None
        assert hit.answer.body == b"stored body"
        assert (b"age", b"1") in hit.answer.headers

    run_with(make_store, scenario)


def test_stale_entry_is_revalidated_not_served(make_store: StoreFactory) -> None:
    async def scenario() -> None:
        store = await make_store()
        etagged = [(b"cache-control", b"max-age=10"), (b"etag", b'"v1"')]
        assert await store.put(KEY, entry(headers=etagged))
        decision = await store.lookup(KEY, "GET", [], NOW + 11)
        assert decision.action is Action.REVALIDATE and decision.entry is not None
        assert decision.entry.etag == b'"v1"'

    run_with(make_store, scenario)


def test_variants_are_selected_by_vary(make_store: StoreFactory) -> None:
    async def scenario() -> None:
        store = await make_store()
        vary = [(b"cache-control", b"max-age=60"), (b"vary", b"Accept-Encoding")]
        gzip, plain = [(b"accept-encoding", b"gzip")], [(b"accept-encoding", b"identity")]
        assert await store.put(KEY, entry(b"zipped", vary, gzip))
        assert await store.put(KEY, entry(b"plain", vary, plain))
        assert (await store.lookup(KEY, "GET", gzip, NOW)).answer.body == b"zipped"  # type: ignore[union-attr]
        assert (await store.lookup(KEY, "GET", plain, NOW)).answer.body == b"plain"  # type: ignore[union-attr]
        other = await store.lookup(KEY, "GET", [(b"accept-encoding", b"br")], NOW)
        assert other.action is Action.MISS and other.fwd == "vary-miss"

    run_with(make_store, scenario)


def test_same_variant_is_replaced(make_store: StoreFactory) -> None:
    async def scenario() -> None:
        store = await make_store()
        assert await store.put(KEY, entry(b"old"))
        assert await store.put(KEY, entry(b"new", at=NOW + 5))
        hit = await store.lookup(KEY, "GET", [], NOW + 6)
        assert hit.answer is not None and hit.answer.body == b"new"
        assert (await store.usage())[0] == 1

    run_with(make_store, scenario)


def test_invalidate_drops_every_variant(make_store: StoreFactory) -> None:
    async def scenario() -> None:
        store = await make_store()
        vary = [(b"cache-control", b"max-age=60"), (b"vary", b"Accept")]
        await store.put(KEY, entry(b"a", vary, [(b"accept", b"a")]))
        await store.put(KEY, entry(b"b", vary, [(b"accept", b"b")]))
        await store.put(KEY + "/other", entry(b"kept"))
        assert await store.invalidate(KEY) == 2
        assert await store.invalidate(KEY) == 0
        assert (await store.lookup(KEY, "GET", [(b"accept", b"a")], NOW)).fwd == "uri-miss"
        assert await store.primary_keys() == [KEY + "/other"]

    run_with(make_store, scenario)


def test_too_large_is_refused(make_store: StoreFactory) -> None:
    async def scenario() -> None:
        store = await make_store(max_bytes=4096, max_entry_bytes=1000)
        assert not await store.put(KEY, entry(b"x" * 1001))
        assert await store.put(KEY, entry(b"x" * 1000))
        assert (await store.usage())[0] == 1

    run_with(make_store, scenario)


def test_request_no_store_bypasses_without_reading(make_store: StoreFactory) -> None:
    async def scenario() -> None:
        store = await make_store()
        await store.put(KEY, entry())
        decision = await store.lookup(KEY, "GET", [(b"cache-control", b"no-store")], NOW)
        assert decision.action is Action.BYPASS and decision.entry is None

    run_with(make_store, scenario)


# --- size bounds (memory and shared; Redis is bounded by its own maxmemory) -------------------


@pytest.mark.parametrize("kind", ["memory", "shared"])
def test_least_recently_used_is_evicted(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        one = entry(b"x" * 3000)
        settings = CacheSettings(max_bytes=3 * one.size, max_entry_bytes=4000, store=kind)
        store = open_store(settings, tmp_path / "lru")
        for name in ("a", "b", "c"):
            assert await store.put(f"{KEY}/{name}", one)
        assert store.current_bytes == 3 * one.size
        await store.lookup(f"{KEY}/a", "GET", [], NOW)  # a is now more recent than b
        assert await store.put(f"{KEY}/d", one)
        assert sorted(await store.primary_keys()) == [f"{KEY}/{n}" for n in ("a", "c", "d")]
        assert store.current_bytes == 3 * one.size and len(store) == 3
        await store.aclose()

    run(scenario())


# --- the codec ----------------------------------------------------------------------------------


def test_codec_round_trip_keeps_every_field() -> None:
    original = make_stored_response(
        200,
        [
            (b"cache-control", b'max-age=60, no-cache="set-cookie", stale-if-error=30'),
            (b"cdn-cache-control", b"max-age=600"),
            (b"etag", b'W/"\xe9t\xe9"'),
            (b"last-modified", b"Tue, 14 Nov 2023 22:13:20 GMT"),
            (b"vary", b"accept-encoding"),
            (b"set-cookie", b"dropped=1"),
        ],
        bytes(range(256)) * 4,
        [(b"accept-encoding", b"gzip")],
        NOW,
        NOW + 0.25,
    )
    decoded = codec.decode(codec.encode(original), DEFAULT_POLICY)
    assert decoded == original  # every field, the body and the parsed Cache-Control


def test_codec_rejects_what_it_did_not_write() -> None:
    good = codec.encode(entry())
    for bad in (b"", b"PGC1", b"pickle" + good, good[:20] + b"{" + good[21:]):
        with pytest.raises(codec.CodecError):
            codec.decode(bad, DEFAULT_POLICY)


def test_every_encode_gets_a_new_stamp() -> None:
    one = entry()
    assert codec.stamp_of(codec.encode(one)) != codec.stamp_of(codec.encode(one))


# --- one shared store, two processes' views -----------------------------------------------------


def test_shared_store_is_one_store_for_every_opener(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = SharedStore(tmp_path, MAX, MAX // 2, DEFAULT_POLICY)
        second = SharedStore(tmp_path, MAX, MAX // 2, DEFAULT_POLICY)
        assert await first.put(KEY, entry(b"v1"))
        hit = await second.lookup(KEY, "GET", [], NOW)
        assert hit.answer is not None and hit.answer.body == b"v1"
        # A new version stored by one is what the other serves (its decoded copy is stale).
        assert await first.put(KEY, entry(b"v2", at=NOW + 1))
        hit = await second.lookup(KEY, "GET", [], NOW + 1)
        assert hit.answer is not None and hit.answer.body == b"v2"
        assert await second.invalidate(KEY) == 1
        assert (await first.lookup(KEY, "GET", [], NOW + 1)).fwd == "uri-miss"
        assert len(first) == 0 and first.current_bytes == 0
        await first.aclose()
        await second.aclose()

    run(scenario())


def test_shared_coalescing_spans_openers(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = SharedStore(tmp_path, MAX, MAX // 2, DEFAULT_POLICY).coalescer(2.0)
        second = SharedStore(tmp_path, MAX, MAX // 2, DEFAULT_POLICY).coalescer(2.0)
        flight = first.try_lead(KEY)
        assert flight is not None
        assert first.try_lead(KEY) is None  # the same process: waits on the local flight
        assert second.try_lead(KEY) is None  # another process: the key is taken
        waiter = asyncio.create_task(second.wait(KEY))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        flight.release()
        assert await waiter is True
        again = second.try_lead(KEY)
        assert again is not None
        again.release()

    run(scenario())


def test_shared_wait_gives_up_after_the_timeout(tmp_path: Path) -> None:
    async def scenario() -> None:
        leader = SharedStore(tmp_path, MAX, MAX // 2, DEFAULT_POLICY).coalescer(5.0)
        waiter = SharedStore(tmp_path, MAX, MAX // 2, DEFAULT_POLICY).coalescer(0.05)
        flight = leader.try_lead(KEY)
        assert flight is not None
        assert await waiter.wait(KEY) is False
        flight.release()

    run(scenario())


def test_memory_store_is_the_per_process_response_cache() -> None:
    store = open_store(CacheSettings())
    assert isinstance(store, MemoryStore) and isinstance(store.cache, ResponseCache)


# --- Redis outages ------------------------------------------------------------------------------


def test_redis_outage_passes_through_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        server = RedisServer(tmp_path)
        store = RedisStore(server.url, MAX, MAX // 2, DEFAULT_POLICY)
        assert await store.put(KEY, entry(b"before"))
        assert (await store.lookup(KEY, "GET", [], NOW)).action is Action.HIT
        server.kill()
        with caplog.at_level(logging.WARNING, logger="gateway.cache"):
            for _ in range(3):
                decision = await store.lookup(KEY, "GET", [], NOW)
                assert decision.action is Action.MISS and decision.answer is None
                assert not await store.put(KEY, entry(b"during"))
                assert await store.invalidate(KEY) == 0
        outage = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(outage) == 1 and server.url in outage[0].getMessage()
        await store.aclose()

    run(scenario())


def test_redis_unreachable_from_the_start_is_a_miss(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        store = RedisStore("redis://127.0.0.1:1/0", MAX, MAX // 2, DEFAULT_POLICY)
        with caplog.at_level(logging.WARNING, logger="gateway.cache"):
            decision = await store.lookup(KEY, "GET", [], NOW)
        assert decision.action is Action.MISS
        assert any("passing requests through" in r.getMessage() for r in caplog.records)
        await store.aclose()

    run(scenario())


def test_an_unusable_shared_directory_says_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SharedStoreError) as info:
        SharedStore(blocker / "cache", MAX, MAX // 2, DEFAULT_POLICY)
    assert str(blocker / "cache") in str(info.value) and 'store = "memory"' in str(info.value)
