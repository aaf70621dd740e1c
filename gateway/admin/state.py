"""What the admin API shows: one process's state as plain data, and the whole gateway's view.

Every gateway process (the only one, or each worker) describes itself with
``describe_process``: its upstream servers' health as it sees them, the certificates it serves,
its cache, its open connections and its ``Metrics``.  ``merge_views`` adds several processes'
descriptions up into the answer for the whole gateway, so no answer depends on which worker
the kernel picked:

- counters (requests, durations, cache results, connections, cache entries and bytes) are
  summed;
- a server's state is the one most processes report, a tie going to the worse one (DOWN,
  then DRAINING, then UP): each worker runs its own health checks, and for a moment after a
  change they may disagree; ``workers`` in each server says how many saw what;
- certificates are the same files in every process and are listed once.

All of it is JSON-able: with several workers the descriptions travel over a unix socket.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.admin.metrics import merge_metrics
from gateway.config import RouteSettings, Settings

if TYPE_CHECKING:
    from gateway.server import Gateway
    from gateway.upstream.group import Upstream

STATE_ORDER = {"DOWN": 0, "DRAINING": 1, "UP": 2}  # worse first


def _wall_clock(monotonic: float | None) -> str | None:
    """An RFC 3339 time for a ``time.monotonic()`` reading."""
    if monotonic is None:
        return None
    moment = time.time() - (time.monotonic() - monotonic)
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


def _servers(upstream: Upstream, draining: bool) -> list[dict[str, Any]]:
    servers = []
    for server, health in upstream.health.items():
        pool = upstream.pools[server]
        in_flight = getattr(pool, "in_flight", 0)
        if draining and not in_flight:
            continue
        servers.append(
            {
                "url": server.url,
                "state": "DRAINING" if draining else health.status.value,
                "last_check": _wall_clock(health.last_checked),
                "last_change": _wall_clock(health.last_change),
                "last_error": health.last_error,
                "failures": health.consecutive_failures,
                "in_flight": in_flight,
                "connections_opened": pool.opened,
            }
        )
    return servers


def describe_upstreams(
    current: Iterable[Upstream], retired: Iterable[Upstream]
) -> list[dict[str, Any]]:
    """Pools as ``/api/upstreams`` lists them.  Servers a reload removed stay listed as
    DRAINING while requests started before it are still running on them."""
    pools: dict[str, dict[str, Any]] = {}
    for upstream in current:
        pools[upstream.name] = {"name": upstream.name, "servers": _servers(upstream, False)}
    for upstream in retired:
        pool = pools.setdefault(upstream.name, {"name": upstream.name, "servers": []})
        listed = {server["url"] for server in pool["servers"]}
        pool["servers"] += [s for s in _servers(upstream, True) if s["url"] not in listed]
    return [pool for pool in pools.values() if pool["servers"]]


def describe_route(route: RouteSettings) -> dict[str, Any]:
    described: dict[str, Any] = {
        "hosts": list(route.hosts),
        "path_prefix": route.path_prefix,
        "middlewares": list(route.middlewares),
        "strip_prefix": route.strip_prefix,
        "cache": route.cache,
    }
    if route.upstream is not None:
        described["upstream"] = route.upstream
    elif route.static is not None:
        described["static"] = str(route.static)
    elif route.redirect is not None:
        described["redirect"] = route.redirect
    return described


def describe_process(gateway: Gateway) -> dict[str, Any]:
    """This process's part of the admin answers (see the module docstring)."""
    app = gateway.app
    cache = app.cache.store if app.cache is not None else None
    certificates = []
    for served in gateway.tls.certificates():
        described = served.as_json()
        described["not_after_epoch"] = served.not_after.timestamp()
        certificates.append(described)
    return {
        "pid": gateway.pid,
        "worker": gateway.worker,
        "generation": gateway.generation,
        "config": str(gateway.settings.path),
        "upstreams": describe_upstreams(gateway.upstreams.values(), gateway.retired_upstreams),
        "routes": [describe_route(route) for route in gateway.settings.routes],
        "certificates": certificates,
        "cache": {
            "enabled": cache is not None,
            "entries": len(cache) if cache is not None else 0,
            "bytes": cache.current_bytes if cache is not None else 0,
            "max_bytes": cache.max_bytes if cache is not None else 0,
        },
        "connections": gateway.connections_active(),
        "metrics": gateway.metrics.snapshot(),
    }


def _merge_server(reports: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for report in reports:
        counts[report["state"]] = counts.get(report["state"], 0) + 1
    state = max(counts, key=lambda s: (counts[s], -STATE_ORDER.get(s, 0)))
    checks = [r["last_check"] for r in reports if r["last_check"]]
    changes = [r["last_change"] for r in reports if r["last_change"]]
    errors = [r["last_error"] for r in reports if r["last_error"]]
    return {
        "url": reports[0]["url"],
        "state": state,
        "last_check": max(checks) if checks else None,
        "last_change": max(changes) if changes else None,
        "last_error": errors[-1] if errors else None,
        "failures": max(r["failures"] for r in reports),
        "in_flight": sum(r["in_flight"] for r in reports),
        "connections_opened": sum(r["connections_opened"] for r in reports),
        "workers": counts,
    }


def merge_views(processes: list[Mapping[str, Any]], settings: Settings) -> dict[str, Any]:
    """The whole gateway from its processes' ``describe_process`` (see the module docstring).
    Routes come from ``settings``, the config every process runs once a reload is through."""
    pools: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for process in processes:
        for upstream in process["upstreams"]:
            servers = pools.setdefault(upstream["name"], {})
            for server in upstream["servers"]:
                servers.setdefault(server["url"], []).append(server)
    certificates: dict[tuple[Any, ...], dict[str, Any]] = {}
    for process in processes:
        for cert in process["certificates"]:
            certificates.setdefault((tuple(cert["names"]), cert["not_after"]), cert)
    caches = [process["cache"] for process in processes]
    # A shared or Redis store is one store every process reports: counted once.
    shared = settings.cache.store != "memory"
    metrics = merge_metrics(process["metrics"] for process in processes)
    results = metrics["cache"]
    return {
        "processes": [
            {
                "pid": p["pid"],
                "worker": p["worker"],
                "generation": p["generation"],
                "requests": sum(row[3] for row in p["metrics"]["requests"]),
            }
            for p in processes
        ],
        "upstreams": [
            {"name": name, "servers": [_merge_server(reports) for reports in servers.values()]}
            for name, servers in pools.items()
        ],
        "routes": [describe_route(route) for route in settings.routes],
        "certificates": list(certificates.values()),
        "cache": {
            "enabled": any(c["enabled"] for c in caches),
            "entries": _combine([c["entries"] for c in caches], shared),
            "bytes": _combine([c["bytes"] for c in caches], shared),
            "max_bytes": _combine([c["max_bytes"] for c in caches], shared),
            # Served from the cache vs. fetched from the upstream (X-Cache results).
            "hits": results.get("HIT", 0) + results.get("STALE", 0),
            "misses": results.get("MISS", 0) + results.get("EXPIRED", 0),
            "results": results,
        },
        "connections": sum(int(p["connections"]) for p in processes),
        "metrics": metrics,
    }


def _combine(values: list[int], shared: bool) -> int:
    return max(values, default=0) if shared else sum(values)


async def purge_cache(gateway: Gateway, prefix: str) -> int:
    """Drop this process's stored responses whose path starts with ``prefix``."""
    cache = gateway.app.cache
    if cache is None:
        return 0
    store = cache.store
    purged = 0
    for key in await store.primary_keys():
        # scheme://authority/path?query: the path starts at the third slash.
        _, _, rest = key.partition("://")
        path = "/" + rest.partition("/")[2]
        if path.startswith(prefix):
            purged += await store.invalidate(key)
    return purged
