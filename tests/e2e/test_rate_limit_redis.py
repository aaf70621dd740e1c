"""``rate_limit`` with ``store = "redis://..."`` against a real redis-server: the Lua script
does ``take_token``'s arithmetic on the server's clock; two gateways (two machines) on one
Redis share each client's bucket; without Redis each limits on its own and says so once, and
they share again once it is back; a reload closes the replaced middleware's connections.

Clients are told apart by X-Forwarded-For (the gateways trust 127.0.0.1), so every phase of
a test has fresh buckets.  With ``average = 1`` a bucket gets a token back per second, so
"admitted" is checked as ``burst <= admitted <= burst + elapsed * average``.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import httpx
import pytest
import redis
from support.redis_server import RedisServer, redis_server

from e2e.harness import Gateway, StackConfig, free_port, stack, two_gateways
from gateway.middleware.buckets import BucketTable, take_token
from gateway.middleware.redis_buckets import RedisBuckets, key_prefix

pytestmark = pytest.mark.e2e

AVERAGE, BURST = 1.0, 3


def limited_config(url: str, upstream: str) -> StackConfig:
    return StackConfig(
        pools={"pool": [upstream]},
        routes=[{"path_prefix": "/", "upstream": "pool", "middlewares": ["limit"]}],
        gateway={"trusted_proxies": ["127.0.0.1/32"]},
        middlewares={
            "limit": {"type": "rate_limit", "average": AVERAGE, "burst": BURST, "store": url}
        },
    )


def from_client(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def spread(
    clients: list[httpx.Client], address: str, count: int
) -> tuple[list[httpx.Response], float]:
    """``count`` requests from ``address``, taking turns over ``clients``; and the seconds
    they took (refill time)."""
    started = time.monotonic()
    responses = [
        clients[i % len(clients)].get("/echo", headers=from_client(address)) for i in range(count)
    ]
    return responses, time.monotonic() - started


def assert_limited_to_one_bucket(responses: list[httpx.Response], elapsed: float) -> None:
    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert [r.status_code for r in responses[:BURST]] == [200] * BURST
    assert BURST <= len(admitted) <= BURST + elapsed * AVERAGE, (len(admitted), elapsed)
    assert refused, [r.status_code for r in responses]
    # Refused takes wait at most 1 / average = 1 s: Retry-After is that, rounded up.
    assert all(r.status_code == 429 and r.headers["retry-after"] == "1" for r in refused)
    assert all("rate limit exceeded" in r.json()["message"] for r in refused)


def test_the_script_does_take_tokens_arithmetic_on_the_servers_clock(tmp_path: Path) -> None:
    """Every take compared with ``take_token`` on the state before it and the server time the
    script used; a refused take's wait is enough; the key expires when the bucket would be
    full; a flushed script is loaded again."""
    rate, burst = 5.0, 3

    async def scenario(server: RedisServer) -> None:
        buckets = RedisBuckets(server.url, "arith", rate, burst, BucketTable(rate, burst))
        client = buckets.client
        key = buckets.prefix + b"192.0.2.1"
        state: tuple[float, float] | None = None  # (tokens, stamp); None: no key, a full bucket
        allowed: list[bool] = []
        slept = False
        for _ in range(9):
            before = await client.time()
            wait_s, tokens_s, now_s = await buckets.script(keys=[key], args=buckets.args)
            after = await client.time()
            now = float(now_s)
            assert before[0] + before[1] / 1e6 <= now <= after[0] + after[1] / 1e6
            tokens, stamp = state or (float(burst), now)
            expected_tokens, expected_wait = take_token(tokens, stamp, now, rate, burst)
            assert (float(tokens_s), float(wait_s)) == (expected_tokens, expected_wait)
            if slept:
                assert expected_wait == 0.0  # waiting what it said was enough
            allowed.append(expected_wait == 0.0)
            if expected_wait == 0.0:
                state = (expected_tokens, now)
                stored = await client.hmget(key, "tokens", "stamp")
                assert tuple(map(float, stored)) == state
                ttl = await client.pttl(key)
                assert 0 < ttl <= math.ceil((burst - expected_tokens) / rate * 1000)
                slept = False
            else:
                await asyncio.sleep(expected_wait)
                slept = True
        assert allowed[:burst] == [True] * burst and False in allowed
        # The public take gives the same answers; a flushed script cache costs nothing.
        await client.script_flush()
        assert await buckets.take(b"192.0.2.2") == 0.0
        assert await client.script_exists(buckets.script.sha) == [True]
        assert buckets.outage.down_until == 0.0  # no error on the way
        await buckets.aclose()

    with redis_server(tmp_path / "redis") as server:
        asyncio.run(asyncio.wait_for(scenario(server), 20))


def test_two_gateways_share_each_clients_bucket(tmp_path: Path) -> None:
    with (
        redis_server(tmp_path / "redis") as server,
        two_gateways(tmp_path, partial(limited_config, server.url)) as (one, two, upstream),
        one.client() as c1,
        two.client() as c2,
    ):
        responses, elapsed = spread([c1, c2], "192.0.2.10", 12)
        assert_limited_to_one_bucket(responses, elapsed)
        admitted = sum(r.status_code == 200 for r in responses)
        assert upstream.seen("/echo") == admitted  # the refused ones never reached it
        # Another client has its own bucket.
        assert c2.get("/echo", headers=from_client("192.0.2.11")).status_code == 200
        # The buckets are Redis keys that expire once they would be full again.
        direct = redis.Redis(port=server.port)
        try:
            prefix = key_prefix("limit", AVERAGE, BURST)
            keys = sorted(direct.scan_iter(match=b"pygateway:rate_limit:*"))
            assert keys == [prefix + b"192.0.2.10", prefix + b"192.0.2.11"]
            assert all(0 < direct.pttl(k) <= BURST / AVERAGE * 1000 for k in keys)
        finally:
            direct.close()


def wait_for_redis_back(gw: Gateway, client: httpx.Client) -> None:
    """Requests until one finds Redis again: the first after the back-off does."""
    deadline = time.monotonic() + 10
    while not gw.log_lines("redis is back"):
        assert time.monotonic() < deadline, gw.process.output()
        client.get("/echo", headers=from_client("198.51.100.1"))
        gw.process.wait_for_line("redis is back", 0.1)  # returns as soon as it is logged


def test_without_redis_each_gateway_limits_alone_until_it_is_back(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there until the Redis below starts
    url = f"redis://127.0.0.1:{port}/0"
    with (
        ExitStack() as cleanup,
        two_gateways(tmp_path, partial(limited_config, url)) as (one, two, _),
        one.client() as c1,
        two.client() as c2,
    ):
        # Every request answered; each gateway admits a whole burst of its own ...
        on_one, elapsed = spread([c1], "192.0.2.20", BURST + 2)
        on_two, _ = spread([c2], "192.0.2.20", BURST)
        assert [r.status_code for r in on_two] == [200] * BURST
        assert_limited_to_one_bucket(on_one, elapsed)  # ... and limits on its own
        for gw in (one, two):
            (line,) = gw.log_lines("redis unreachable")
            assert "rate_limit limit: redis unreachable (" in line
            assert line.endswith("limiting per machine until it is back")

        server = RedisServer(tmp_path / "redis", port)
        cleanup.callback(server.kill)
        for gw, client in ((one, c1), (two, c2)):
            wait_for_redis_back(gw, client)
            assert len(gw.log_lines("redis unreachable")) == 1  # retries did not log again
            (back,) = gw.log_lines("redis is back")
            assert back.endswith("rate_limit limit: redis is back; limiting across machines again")

        responses, elapsed = spread([c1, c2], "192.0.2.21", 12)
        assert_limited_to_one_bucket(responses, elapsed)


def test_a_reload_closes_the_replaced_clients_connections(tmp_path: Path) -> None:
    """Every reload builds the middleware anew; the old one's Redis connection is closed once
    its app is idle, so reloads do not pile up connections on the Redis server."""
    with redis_server(tmp_path / "redis") as server:
        build = partial(limited_config, server.url)
        with (
            stack(tmp_path, ["a"], lambda upstreams: build(upstreams["a"].url)) as s,
            s.gateway.client() as client,
        ):
            gw = s.gateway
            direct = redis.Redis(port=server.port)
            try:

                def gateway_connections() -> int:
                    return len(direct.client_list()) - 1  # not this one

                assert client.get("/echo", headers=from_client("192.0.2.30")).status_code == 200
                assert gateway_connections() == 1
                for generation in range(1, 4):
                    gw.process.signal(signal.SIGHUP)
                    gw.wait_for_log(f"(generation {generation})")
                    address = f"192.0.2.{30 + generation}"
                    assert client.get("/echo", headers=from_client(address)).status_code == 200
                # The old clients are closed by a background task once their app drained:
                # nothing to wait on from outside, so the server's count is polled.
                deadline = time.monotonic() + 5
                while gateway_connections() != 1:
                    assert time.monotonic() < deadline, direct.client_list()
                    time.sleep(0.05)
            finally:
                direct.close()
