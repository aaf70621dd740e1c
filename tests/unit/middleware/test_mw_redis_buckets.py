"""``rate_limit`` with ``store = "redis://..."``, without a socket: the script is replaced by a
fake, so what is checked here is the choice between Redis and this machine's table, the
back-off, the log lines, the key names and the close hook.  The script itself runs against a
real redis-server in ``tests/e2e/test_rate_limit_redis.py``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.config import parse_settings
from gateway.errors import TooManyRequests
from gateway.middleware import build_middlewares, close_middlewares
from gateway.middleware.buckets import BucketTable
from gateway.middleware.rate_limit import RateLimit
from gateway.middleware.redis_buckets import RedisBuckets, key_prefix
from gateway.request import Request

URL = "redis://127.0.0.1:6379/0"  # never connected to: the script is a fake


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 10))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeScript:
    """Answers like ``TAKE`` (``wait`` as bytes) or raises ``error``; records its calls."""

    def __init__(self, wait: bytes = b"0") -> None:
        self.wait = wait
        self.error: Exception | None = None
        self.calls: list[tuple[list[bytes], tuple[float, float]]] = []

    async def __call__(self, keys: list[bytes], args: tuple[float, float]) -> list[bytes]:
        self.calls.append((keys, args))
        if self.error is not None:
            raise self.error
        return [self.wait, b"0", b"1700000000.5"]


def redis_buckets(rate: float = 1.0, burst: int = 2) -> tuple[RedisBuckets, FakeScript, Clock]:
    clock = Clock()
    buckets = RedisBuckets(URL, "api", rate, burst, BucketTable(rate, burst, clock=clock))
    buckets.script = script = FakeScript()
    buckets.outage.clock = clock
    return buckets, script, clock


def test_takes_go_to_redis_under_the_middleware_prefix() -> None:
    async def scenario() -> None:
        buckets, script, _ = redis_buckets(rate=0.5, burst=3)
        assert await buckets.take(b"10.0.0.1") == 0.0
        script.wait = b"1.25"
        assert await buckets.take(b"10.0.0.1") == 1.25
        keys, args = script.calls[-1]
        assert keys == [key_prefix("api", 0.5, 3) + b"10.0.0.1"] and args == (0.5, 3.0)
        # Redis answered: the local table was not touched (its bucket is still full).
        assert buckets.fallback.wait(b"10.0.0.1") == 0.0
        await buckets.aclose()

    run(scenario())


def test_key_prefix_names_the_middleware_and_its_limit() -> None:
    prefix = key_prefix("api", 1.0, 3)
    assert prefix.startswith(b"pygateway:rate_limit:api:") and prefix.endswith(b":")
    assert key_prefix("api", 1, 3.0) == prefix  # the same limit, however it was written
    assert len({prefix, key_prefix("web", 1.0, 3), key_prefix("api", 2.0, 3)}) == 3
    assert key_prefix("api", 1.0, 4) != prefix


@pytest.mark.parametrize(
    "error",
    [RedisConnectionError("Connection refused"), RedisTimeoutError("Timeout"), OSError(111)],
)
def test_an_outage_falls_back_to_this_machine_and_is_logged_once(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        buckets, script, clock = redis_buckets(rate=1.0, burst=2)
        script.error = error
        with caplog.at_level(logging.WARNING, logger="gateway.rate_limit"):
            # Limited by the local table: burst 2, then the wait it computes.
            waits = [await buckets.take(b"a") for _ in range(3)]
            assert waits[:2] == [0.0, 0.0] and waits[2] == pytest.approx(1.0)
            # Only the first take asked Redis: the others fell back at once (the back-off).
            assert len(script.calls) == 1
            clock.now += 0.5
            assert await buckets.take(b"a") == pytest.approx(0.5)
            assert len(script.calls) == 1
            clock.now += 0.6  # the back-off is over: the next take asks Redis again
            assert await buckets.take(b"a") == 0.0  # still down: the local bucket refilled
            assert len(script.calls) == 2
        down = [r.getMessage() for r in caplog.records]
        assert down == [
            f"rate_limit api: redis unreachable ({error}); limiting per machine until it is back"
        ]
        caplog.clear()
        script.error = None
        clock.now += 1.0
        with caplog.at_level(logging.WARNING, logger="gateway.rate_limit"):
            script.wait = b"0.75"
            assert await buckets.take(b"a") == 0.75  # Redis's answer, not the local table's
            assert await buckets.take(b"a") == 0.75
        assert [r.getMessage() for r in caplog.records] == [
            "rate_limit api: redis is back; limiting across machines again"
        ]
        assert len(script.calls) == 4
        await buckets.aclose()

    run(scenario())


def settings_with(tmp_path: Path, options: dict[str, Any]) -> Any:
    data = {
        "upstreams": {"app": {"servers": ["http://127.0.0.1:9001"]}},
        "routes": [{"path_prefix": "/", "upstream": "app", "middlewares": ["limit"]}],
        "middlewares": {"limit": {"type": "rate_limit", **options}},
    }
    return parse_settings(data, tmp_path / "config.toml")


def request_from(address: str) -> Request:
    scope = {"type": "http", "client": (address, 50000), "headers": []}
    return Request(scope, None, None, None, None, None)  # type: ignore[arg-type]


def test_the_middleware_awaits_redis_and_answers_429_with_retry_after(tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = settings_with(tmp_path, {"average": 2, "burst": 1, "store": URL})
        (limit,) = build_middlewares(settings).values()
        assert isinstance(limit, RateLimit) and limit.redis is not None
        limit.redis.script = script = FakeScript()
        passed: list[Request] = []

        async def handler(request: Request) -> None:
            passed.append(request)

        wrapped = limit.wrap(handler)
        await wrapped(request_from("192.0.2.1"))
        assert len(passed) == 1 and script.calls[0][0][0].endswith(b":192.0.2.1")
        script.wait = b"1.2"
        with pytest.raises(TooManyRequests) as refused:
            await wrapped(request_from("192.0.2.1"))
        assert refused.value.retry_after == 2 and len(passed) == 1
        assert "192.0.2.1 (2 requests/s, burst 1; limit)" in str(refused.value)
        # Short timeouts: a dead Redis must not stall requests.
        assert limit.redis.client.connection_pool.connection_kwargs["socket_timeout"] == 0.25
        client, closed = limit.redis.client, []
        close = client.aclose

        async def recorded_close() -> None:
            closed.append(client)
            await close()

        client.aclose = recorded_close
        await close_middlewares([limit])
        assert closed == [client]

    run(scenario())


def test_without_a_store_the_take_stays_synchronous(tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = settings_with(tmp_path, {"average": 1, "burst": 1})
        (limit,) = build_middlewares(settings).values()
        assert isinstance(limit, RateLimit) and limit.redis is None
        calls: list[bytes] = []
        take = limit.buckets.take

        def counted(key: bytes) -> float:  # a plain function: nothing to await
            calls.append(key)
            return take(key)

        limit.buckets.take = counted  # type: ignore[method-assign]

        async def handler(request: Request) -> None:
            pass

        wrapped = limit.wrap(handler)
        await wrapped(request_from("192.0.2.2"))
        with pytest.raises(TooManyRequests):
            await wrapped(request_from("192.0.2.2"))
        assert calls == [b"192.0.2.2", b"192.0.2.2"]
        await close_middlewares([limit])  # nothing to close: no error either

    run(scenario())


def test_close_middlewares_closes_those_with_an_aclose() -> None:
    closed: list[str] = []

    class Holder:
        applies_to_websocket = False

        def wrap(self, handler: Any) -> Any:
            return handler

        async def aclose(self) -> None:
            closed.append("holder")

    class Plain:
        applies_to_websocket = False

        def wrap(self, handler: Any) -> Any:
            return handler

    run(close_middlewares([Plain(), Holder(), Plain()]))
    assert closed == ["holder"]
