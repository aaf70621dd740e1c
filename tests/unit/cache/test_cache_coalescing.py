"""Request coalescing (Nginx proxy_cache_lock): one upstream fetch for concurrent misses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from gateway.cache.coalescing import Coalescer, HitForPass


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 5))


class Origin:
    """A fake upstream behind a fake cache: counts fetches, answers when ``gate`` opens."""

    def __init__(self, *, cacheable: bool = True, fail: bool = False) -> None:
        self.cacheable = cacheable
        self.fail = fail
        self.fetches = 0
        self.gate = asyncio.Event()
        self.cache: dict[str, bytes] = {}

    async def fetch(self, key: str) -> bytes:
        self.fetches += 1
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("upstream reset")
        return b"body of " + key.encode()

    async def handle(self, coalescer: Coalescer, key: str) -> tuple[bytes, str]:
        """The wiring the proxy will do: look up, coalesce the miss, look up again."""
        if key in self.cache:
            return self.cache[key], "hit"
        async with coalescer.lead_or_wait(key) as leader:
            if not leader and key in self.cache:
                return self.cache[key], "collapsed"
            body = await self.fetch(key)
            if self.cacheable:
                self.cache[key] = body
            return body, "leader" if leader else "upstream"


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_100_concurrent_misses_make_exactly_one_upstream_request() -> None:
    async def scenario() -> None:
        coalescer, origin = Coalescer(timeout=5), Origin()
        tasks = [asyncio.create_task(origin.handle(coalescer, "k")) for _ in range(100)]
        await settle()
        assert origin.fetches == 1 and "k" in coalescer
        origin.gate.set()
        results = await asyncio.gather(*tasks)
        roles = [role for _, role in results]
        assert roles.count("leader") == 1 and roles.count("collapsed") == 99
        assert {body for body, _ in results} == {b"body of k"}
        assert origin.fetches == 1
        assert len(coalescer) == 0

    run(scenario())


def test_uncacheable_response_releases_waiters_to_go_upstream_themselves() -> None:
    async def scenario() -> None:
        coalescer, origin = Coalescer(timeout=5), Origin(cacheable=False)
        tasks = [asyncio.create_task(origin.handle(coalescer, "k")) for _ in range(10)]
        await settle()
        assert origin.fetches == 1  # the others wait for the leader first
        origin.gate.set()
        roles = [role for _, role in await asyncio.gather(*tasks)]
        assert roles.count("leader") == 1 and roles.count("upstream") == 9
        assert origin.fetches == 10 and len(coalescer) == 0

    run(scenario())


def test_a_failing_leader_releases_the_waiters_at_once() -> None:
    async def scenario() -> None:
        coalescer, origin = Coalescer(timeout=30), Origin(fail=True)
        tasks = [asyncio.create_task(origin.handle(coalescer, "k")) for _ in range(5)]
        await settle()
        started = time.monotonic()
        origin.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(result, ConnectionError) for result in results)
        assert origin.fetches == 5  # each waiter tried upstream itself
        assert time.monotonic() - started < 1  # nobody sat out the 30 s timeout
        assert len(coalescer) == 0

    run(scenario())


def test_a_cancelled_leader_releases_the_waiters() -> None:
    async def scenario() -> None:
        coalescer, origin = Coalescer(timeout=30), Origin()
        leader = asyncio.create_task(origin.handle(coalescer, "k"))
        await settle()
        waiters = [asyncio.create_task(origin.handle(coalescer, "k")) for _ in range(3)]
        await settle()
        leader.cancel()
        await settle()
        assert leader.cancelled()
        assert "k" not in coalescer  # the flight was released on cancellation
        origin.gate.set()
        roles = [role for _, role in await asyncio.gather(*waiters)]
        assert roles == ["upstream"] * 3
        assert len(coalescer) == 0

    run(scenario())


def test_a_stuck_leader_holds_waiters_only_until_the_timeout() -> None:
    async def scenario() -> None:
        coalescer, origin = Coalescer(timeout=0.05), Origin()
        leader = asyncio.create_task(origin.handle(coalescer, "k"))
        await settle()
        started = time.monotonic()
        waiter = asyncio.create_task(origin.handle(coalescer, "k"))
        await settle()
        assert origin.fetches == 1
        await asyncio.sleep(0.1)  # the waiter gave up and went upstream
        assert origin.fetches == 2
        origin.gate.set()
        assert (await waiter)[1] == "upstream"
        assert time.monotonic() - started < 1
        assert (await leader)[1] == "leader"
        assert len(coalescer) == 0

    run(scenario())


def test_wait_reports_a_timeout() -> None:
    async def scenario() -> None:
        coalescer = Coalescer(timeout=0.01)
        flight = coalescer.try_lead("k")
        assert flight is not None
        assert await coalescer.wait("k") is False
        assert await coalescer.wait("k", timeout=0.01) is False
        flight.release()
        assert await coalescer.wait("k") is True  # nobody leads: nothing to wait for
        assert await flight.wait(0.01) is True

    run(scenario())


def test_a_cancelled_waiter_does_not_disturb_the_leader() -> None:
    async def scenario() -> None:
        coalescer, origin = Coalescer(timeout=30), Origin()
        leader = asyncio.create_task(origin.handle(coalescer, "k"))
        await settle()
        waiter = asyncio.create_task(origin.handle(coalescer, "k"))
        await settle()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert "k" in coalescer
        origin.gate.set()
        assert (await leader)[1] == "leader"
        assert len(coalescer) == 0

    run(scenario())


def test_different_keys_do_not_wait_for_each_other() -> None:
    async def scenario() -> None:
        coalescer, origin = Coalescer(timeout=30), Origin()
        tasks = [asyncio.create_task(origin.handle(coalescer, key)) for key in "abc"]
        await settle()
        assert origin.fetches == 3 and len(coalescer) == 3
        origin.gate.set()
        assert [role for _, role in await asyncio.gather(*tasks)] == ["leader"] * 3

    run(scenario())


def test_try_lead_and_idempotent_release() -> None:
    async def scenario() -> None:
        coalescer = Coalescer()
        first = coalescer.try_lead("k")
        assert first is not None and coalescer.try_lead("k") is None
        first.release()
        assert first.released and "k" not in coalescer
        second = coalescer.try_lead("k")
        assert second is not None
        first.release()  # a late second release must not end the new flight
        assert "k" in coalescer and not second.released
        second.release()
        assert len(coalescer) == 0

    run(scenario())


def test_hit_for_pass_remembers_uncacheable_keys_for_a_while() -> None:
    now = [100.0]
    passes = HitForPass(lambda: now[0], ttl=60, max_keys=2)
    passes.add("a")
    assert "a" in passes and "b" not in passes
    now[0] += 61
    assert "a" not in passes and len(passes) == 0  # expired entries are dropped when seen
    passes.add("a")
    passes.discard("a")  # a stored response makes the key cacheable again
    assert "a" not in passes
    for key in "abc":
        passes.add(key)
    assert len(passes) <= 2  # bounded: cleared when full
