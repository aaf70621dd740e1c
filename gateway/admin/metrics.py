"""Request counters per process, and the Prometheus text exposition of a whole gateway.

Counting is on the hot path, so it is plain Python: a dict increment, a bisect into fixed
histogram buckets and a deque append per request (seven dict increments' worth).
prometheus_client's multiprocess mode was measured at 3.7-6 µs a request (7-11 % of a request
at this gateway's speed), because every increment goes through an mmap'd file.  Here each
process keeps its own ``Metrics``; the admin API asks every process for ``snapshot()`` (plain
JSON-able data), adds them up with ``merge_metrics`` and renders the text only when
``/metrics`` is scraped.

Exposition format: https://prometheus.io/docs/instrumenting/exposition_formats/ (text 0.0.4).
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.access_log import Exchange

# Seconds; the upper bounds of gateway_request_duration_seconds' buckets (+Inf is implied).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RECENT_REQUESTS = 50  # the dashboard's live tail, per process
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (route label, upstream label): "" where there is none (no route matched, a static route).
Labels = tuple[str, str]
NO_ROUTE: Labels = ("", "")


class Metrics:
    """One process's counters since it started; survives reloads (one per process)."""

    __slots__ = (
        "requests",
        "buckets",
        "duration_sum",
        "cache",
        "hot_hits",
        "express",
        "recent",
        "started",
    )

    def __init__(self, recent: int = RECENT_REQUESTS) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.duration_sum = 0.0
        self.cache: dict[str, int] = {}
        self.hot_hits = 0  # of the cache's HITs, those the listener answered (cache.hot)
        self.express = 0  # proxied requests answered on the express lane (gateway.express)
        # (exchange, when it ended by perf_counter, route label): a bounded live tail.
        self.recent: deque[tuple[Exchange, float, str]] = deque(maxlen=recent)
        self.started = time.time()

    def observe(self, exchange: Exchange, labels: Labels) -> None:
        """Count one finished request (``GatewayApp``'s ``finally``)."""
        now = time.perf_counter()
        elapsed = now - exchange.started
        key = (labels[0], labels[1], exchange.status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        self.buckets[bisect.bisect_left(DURATION_BUCKETS, elapsed)] += 1
        self.duration_sum += elapsed
        cache = exchange.cache
        if cache != "-":
            self.cache[cache] = self.cache.get(cache, 0) + 1
        # The record itself: its line is made only when the dashboard asks (``snapshot``).
        self.recent.append((exchange, now, labels[0]))

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain data (sent between processes as JSON)."""
        wall, clock = time.time(), time.perf_counter()
        return {
            "requests": [[r, u, code, n] for (r, u, code), n in self.requests.items()],
            "buckets": list(self.buckets),
            "duration_sum": self.duration_sum,
            "cache": dict(self.cache),
            "hot_hits": self.hot_hits,
            "express": self.express,
            "recent": [
                {
                    "time": wall - (clock - ended),
                    "method": exchange.scope["method"],
                    "target": exchange.target,
                    "status": exchange.status,
                    "duration": ended - exchange.started,
                    "upstream": exchange.upstream,
                    "bytes": exchange.bytes_sent,
                    "route": route,
                }
                for exchange, ended, route in self.recent
            ],
        }


def merge_metrics(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Several processes' ``snapshot()`` added up: counters summed, recent requests merged
    newest last."""
    requests: dict[tuple[str, str, int], int] = {}
    buckets = [0] * (len(DURATION_BUCKETS) + 1)
    duration_sum = 0.0
    cache: dict[str, int] = {}
    hot_hits = express = 0
    recent: list[dict[str, Any]] = []
    for snap in snapshots:
        for route, upstream, code, n in snap["requests"]:
            key = (route, upstream, int(code))
            requests[key] = requests.get(key, 0) + int(n)
        for i, n in enumerate(snap["buckets"]):
            buckets[i] += int(n)
        duration_sum += float(snap["duration_sum"])
        for result, n in snap["cache"].items():
            cache[result] = cache.get(result, 0) + int(n)
        hot_hits += int(snap["hot_hits"])
        express += int(snap["express"])
        recent.extend(snap["recent"])
    recent.sort(key=lambda r: float(r["time"]))
    return {
        "requests": [[r, u, code, n] for (r, u, code), n in sorted(requests.items())],
        "buckets": buckets,
        "duration_sum": duration_sum,
        "cache": cache,
        "hot_hits": hot_hits,
        "express": express,
        "recent": recent[-RECENT_REQUESTS:],
    }


def quantile(buckets: list[int], q: float) -> float | None:
    """The ``q`` quantile estimated from histogram bucket counts (not cumulative), by linear
    interpolation inside the bucket, as PromQL's ``histogram_quantile``; None without data."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            if i == len(DURATION_BUCKETS):  # +Inf: the highest finite bound is all we know
                return DURATION_BUCKETS[-1]
            lower = DURATION_BUCKETS[i - 1] if i else 0.0
            upper = DURATION_BUCKETS[i]
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return DURATION_BUCKETS[-1]


# --- the exposition -------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Mapping[str, str]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def render(view: Mapping[str, Any]) -> str:
    """The whole gateway's ``/metrics`` text from a merged view (see ``admin.state``):
    ``metrics`` (merged counters), ``upstreams``, ``connections`` and ``certificates``."""
    metrics = view["metrics"]
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    def sample(name: str, labels: Mapping[str, str], value: float) -> None:
        out.append(f"{name}{_labels(labels)} {_number(value)}")

    family(
        "gateway_requests_total",
        "counter",
        "Requests answered, by route, upstream pool and status code.",
    )
    for route, upstream, code, n in metrics["requests"]:
        sample(
            "gateway_requests_total", {"route": route, "upstream": upstream, "code": str(code)}, n
        )

    family(
        "gateway_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to the end of its response.",
    )
    cumulative = 0
    for bound, count in zip((*DURATION_BUCKETS, float("inf")), metrics["buckets"], strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else repr(float(bound))  # as prometheus_client
        sample("gateway_request_duration_seconds_bucket", {"le": le}, cumulative)
    sample("gateway_request_duration_seconds_sum", {}, metrics["duration_sum"])
    sample("gateway_request_duration_seconds_count", {}, cumulative)

    family(
        "gateway_upstream_up",
        "gauge",
        "1 while an upstream server is UP (passing its health checks), else 0.",
    )
    for upstream in view["upstreams"]:
        for server in upstream["servers"]:
            labels = {"upstream": upstream["name"], "server": server["url"]}
            sample("gateway_upstream_up", labels, 1 if server["state"] == "UP" else 0)

    family(
        "gateway_cache_requests_total",
        "counter",
        "Requests on caching routes by how the cache answered (the X-Cache value).",
    )
    for result, n in sorted(metrics["cache"].items()):
        sample("gateway_cache_requests_total", {"result": result.lower()}, n)

    family(
        "gateway_cache_hot_hits_total",
        "counter",
        "Of the cache's hits, those the HTTP/1.1 listener answered from their published bytes "
        "without the full request path (gateway.cache.hot).",
    )
    sample("gateway_cache_hot_hits_total", {}, metrics["hot_hits"])

    family(
        "gateway_express_requests_total",
        "counter",
        "Proxied GET/HEAD requests answered on the express lane, without an ASGI task "
        "(gateway.express); the others took the full request path.",
    )
    sample("gateway_express_requests_total", {}, metrics["express"])

    family("gateway_connections_active", "gauge", "Client connections open now.")
    sample("gateway_connections_active", {}, view["connections"])

    family(
        "gateway_certificate_expiry_seconds",
        "gauge",
        "Seconds until a served certificate expires (negative once it has), by name.",
    )
    now = time.time()
    expiry: dict[str, float] = {}
    for cert in view["certificates"]:
        for name in cert["names"]:
            left = float(cert["not_after_epoch"]) - now
            expiry[name] = min(left, expiry.get(name, left))
    for name, left in sorted(expiry.items()):
        sample("gateway_certificate_expiry_seconds", {"name": name}, round(left, 3))
    return "\n".join(out) + "\n"
