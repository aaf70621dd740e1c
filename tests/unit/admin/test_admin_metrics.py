"""Per-process counters, their sum over processes and the Prometheus text, read back with
prometheus_client's own parser (the proof that scrapers accept it)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.access_log import Exchange
from gateway.admin.metrics import DURATION_BUCKETS, Metrics, merge_metrics, quantile, render


def exchange(status: int, seconds: float, cache: str = "-", path: str = "/x") -> Exchange:
    scope = {"method": "GET", "path": path, "raw_path": path.encode(), "query_string": b""}
    ex = Exchange(scope)
    ex.started = time.perf_counter() - seconds
    ex.status = status
    ex.cache = cache
    ex.upstream = "127.0.0.1:9001"
    return ex


def view(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "metrics": metrics,
        "upstreams": [
            {
                "name": "app",
                "servers": [
                    {"url": "http://127.0.0.1:9001", "state": "UP"},
                    {"url": "http://127.0.0.1:9002", "state": "DOWN"},
                ],
            }
        ],
        "connections": 3,
        "certificates": [
            {"names": ["localhost", "127.0.0.1"], "not_after_epoch": time.time() + 86400}
        ],
    }


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_two_processes_are_summed_and_the_text_parses() -> None:
    first, second = Metrics(), Metrics()
    first.observe(exchange(200, 0.003, "HIT"), ("/", "app"))
    first.observe(exchange(200, 0.2, "MISS"), ("/", "app"))
    second.observe(exchange(200, 0.004), ("/", "app"))
    second.observe(exchange(502, 20.0), ("/", "app"))
    second.observe(exchange(421, 0.0001), ("", ""))
    first.hot_hits, second.hot_hits = 2, 3  # hits the listener answered (cache.hot)
    merged = merge_metrics([first.snapshot(), second.snapshot()])
    found = samples(render(view(merged)))

    def requests(code: str, route: str = "/", upstream: str = "app") -> float:
        key = (("code", code), ("route", route), ("upstream", upstream))
        return found[("gateway_requests_total", key)]

    assert requests("200") == 3
    assert requests("502") == 1
    assert requests("421", "", "") == 1
    assert found[("gateway_request_duration_seconds_count", ())] == 5
    assert found[("gateway_request_duration_seconds_bucket", (("le", "0.005"),))] == 3
    assert found[("gateway_request_duration_seconds_bucket", (("le", "10.0"),))] == 4
    assert found[("gateway_request_duration_seconds_bucket", (("le", "+Inf"),))] == 5
    assert found[("gateway_request_duration_seconds_sum", ())] == pytest.approx(20.2071, abs=0.01)
    assert found[("gateway_cache_requests_total", (("result", "hit"),))] == 1
    assert found[("gateway_cache_requests_total", (("result", "miss"),))] == 1
    assert found[("gateway_cache_hot_hits_total", ())] == 5
    up = ("gateway_upstream_up", (("server", "http://127.0.0.1:9001"), ("upstream", "app")))
    down = ("gateway_upstream_up", (("server", "http://127.0.0.1:9002"), ("upstream", "app")))
    assert (found[up], found[down]) == (1, 0)
    assert found[("gateway_connections_active", ())] == 3
    expiry = found[("gateway_certificate_expiry_seconds", (("name", "localhost"),))]
    assert 86000 < expiry <= 86400


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.observe(exchange(200, 0.01), ('we"ird\\route\n', "app"))
    text = render(view(metrics.snapshot()))
    found = samples(text)
    key = (("code", "200"), ("route", 'we"ird\\route\n'), ("upstream", "app"))
    assert found[("gateway_requests_total", key)] == 1


def test_recent_requests_are_kept_newest_last_and_bounded() -> None:
    metrics = Metrics(recent=3)
    for i in range(5):
        metrics.observe(exchange(200, 0.001, path=f"/p{i}"), ("/", "app"))
    recent = metrics.snapshot()["recent"]
    assert [r["target"] for r in recent] == ["/p2", "/p3", "/p4"]
    assert recent[-1]["upstream"] == "127.0.0.1:9001"


def test_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [0] * (len(DURATION_BUCKETS) + 1)
    assert quantile(buckets, 0.5) is None
    index = DURATION_BUCKETS.index(0.01)
    buckets[index] = 10  # ten requests between 5 ms and 10 ms
    assert quantile(buckets, 0.5) == pytest.approx(0.0075)
    buckets[-1] = 1  # one beyond the last bound: p99 says at least that
    assert quantile(buckets, 0.99) == DURATION_BUCKETS[-1]
