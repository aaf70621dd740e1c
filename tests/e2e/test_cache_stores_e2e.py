"""``[cache] store`` end to end: with ``workers = 2`` one shared store (the default) serves a
response stored by one worker as a hit on the other, coalesces their concurrent misses and
sees an unsafe request's invalidation everywhere; two gateways on one Redis share hits and
invalidations, and a Redis killed mid-run leaves every request answered.

"Served by both workers" is read from the admin API's per-process request counts; "served from
the cache" from the echo upstream's own count of what it answered (``/cache-count``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import pytest
from support.redis_server import redis_server

from e2e.harness import EchoUpstream, Gateway, StackConfig, free_port, stack, two_gateways

pytestmark = pytest.mark.e2e


def answered(upstream: EchoUpstream, path: str) -> int:
    with httpx.Client(trust_env=False, timeout=5) as direct:
        counts: dict[str, int] = direct.get(f"{upstream.url}/cache-count").json()["paths"]
    return counts.get(path, 0)


# Gateways behind one load balancer see one Host: the cache key's authority (each test
# gateway listens on its own port, which would otherwise be part of the key).
SAME_HOST = {"host": "localhost"}


def fresh_get(gw: Gateway, path: str, params: dict[str, str]) -> httpx.Response:
    """One request on a new connection: the kernel hands it to either worker."""
    with gw.client(headers=SAME_HOST) as client:
        response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response


def requests_per_worker(gw: Gateway, admin_port: int) -> list[int]:
    with httpx.Client(verify=gw.ssl_context(), trust_env=False, timeout=30) as admin:
        overview = admin.get(f"https://127.0.0.1:{admin_port}/api/overview").json()
    return [p["requests"] for p in sorted(overview["processes"], key=lambda p: p["worker"])]


@contextlib.contextmanager
def two_workers(tmp_path: Path) -> Iterator[tuple[Gateway, EchoUpstream, int]]:
    admin_port = free_port()

    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        # No [cache] store: two workers get the shared store by default.
        return StackConfig(
            pools={"pool": [upstreams["a"].url]},
            routes=[{"path_prefix": "/", "upstream": "pool"}],
            gateway={"workers": 2},
            admin={"port": admin_port},
        )

    with stack(tmp_path, ["a"], build) as s:
        assert "(2 workers)" in s.gateway.wait_for_log("gateway ready")
        yield s.gateway, s.upstreams["a"], admin_port


def test_two_workers_share_hits_and_invalidations(tmp_path: Path) -> None:
    with two_workers(tmp_path) as (gw, upstream, admin_port):
        params = {"cc": "max-age=60"}
        assert fresh_get(gw, "/cache/shared", params).headers["x-cache"] == "MISS"
        before = requests_per_worker(gw, admin_port)
        hits = [fresh_get(gw, "/cache/shared", params) for _ in range(30)]
        after = requests_per_worker(gw, admin_port)
        assert all(r.headers["x-cache"] == "HIT" for r in hits)
        assert all(r.headers["x-served"] == "1" for r in hits)
        assert answered(upstream, "/cache/shared") == 1
        # Both workers answered some of the 30 (hits on the worker that did not store it).
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)

        # An unsafe request through one worker invalidates the entry for both.
        with gw.client(headers=SAME_HOST) as client:
            changed = client.post("/cache/shared", params=params, content=b"x")
        assert changed.status_code == 200
        again = [fresh_get(gw, "/cache/shared", params) for _ in range(20)]
        assert again[0].headers["x-cache"] == "MISS"
        # Nobody served the invalidated copy (x-served 1); one refetch (the POST was the 2nd).
        assert {r.headers["x-served"] for r in again} == {"3"}
        assert all(r.headers["x-cache"] == "HIT" for r in again[1:])
        assert answered(upstream, "/cache/shared") == 3


def test_concurrent_misses_on_both_workers_go_upstream_once(tmp_path: Path) -> None:
    with two_workers(tmp_path) as (gw, upstream, admin_port):
        params = {"cc": "max-age=60", "delay": "0.3"}
        before = requests_per_worker(gw, admin_port)
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda _: fresh_get(gw, "/cache/herd", params), range(16)))
        after = requests_per_worker(gw, admin_port)
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
        assert answered(upstream, "/cache/herd") == 1
        assert sorted(r.headers["x-cache"] for r in responses) == ["HIT"] * 15 + ["MISS"]


def redis_config(url: str, upstream: str) -> StackConfig:
    return StackConfig(
        pools={"pool": [upstream]},
        routes=[{"path_prefix": "/", "upstream": "pool"}],
        cache={"store": url},
    )


def test_two_gateways_share_one_redis(tmp_path: Path) -> None:
    with (
        redis_server(tmp_path / "redis") as redis,
        two_gateways(tmp_path, partial(redis_config, redis.url)) as gws,
    ):
        one, two, upstream = gws
        params = {"cc": "max-age=60"}
        assert fresh_get(one, "/cache/r", params).headers["x-cache"] == "MISS"
        hit = fresh_get(two, "/cache/r", params)
        assert hit.headers["x-cache"] == "HIT" and hit.headers["x-served"] == "1"
        assert answered(upstream, "/cache/r") == 1
        with two.client(headers=SAME_HOST) as client:
            assert client.delete("/cache/r", params=params).status_code == 200
        refetched = fresh_get(one, "/cache/r", params)
        assert refetched.headers["x-cache"] == "MISS" and refetched.headers["x-served"] == "3"
        assert fresh_get(two, "/cache/r", params).headers["x-served"] == "3"


def test_redis_killed_mid_run_requests_still_succeed(tmp_path: Path) -> None:
    with (
        redis_server(tmp_path / "redis") as redis,
        two_gateways(tmp_path, partial(redis_config, redis.url)) as gws,
    ):
        one, two, upstream = gws
        params = {"cc": "max-age=60"}
        fresh_get(one, "/cache/k", params)
        assert fresh_get(two, "/cache/k", params).headers["x-cache"] == "HIT"
        redis.kill()
        for gw in (one, two):
            with gw.client(headers=SAME_HOST) as client:
                for _ in range(5):
                    response = client.get("/cache/k", params=params)
                    assert response.status_code == 200 and response.headers["x-cache"] == "MISS"
            gw.wait_for_log("passing requests through")
            assert len(gw.log_lines("unavailable")) == 1  # logged once per outage
        assert answered(upstream, "/cache/k") == 11
