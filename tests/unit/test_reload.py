"""Hot reload's pure parts: what a new config changes (``plan_reload``), health carried over
to a changed pool, and the ``AppSwitch`` that keeps in-flight requests on their app."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.config import Settings, parse_settings
from gateway.health import ServerStatus
from gateway.runtime.reload import AppSwitch, carry_health, plan_reload
from gateway.upstream.group import Upstream

BASE: dict[str, Any] = {
    "gateway": {"http_port": 18080, "https_port": 18443},
    "upstreams": {
        "a": {"servers": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]},
        "b": {"servers": ["http://127.0.0.1:9003"]},
    },
    "routes": [{"path_prefix": "/", "upstream": "a"}],
}


def settings(**changes: Any) -> Settings:
    data = {key: (dict(value) if isinstance(value, dict) else value) for key, value in BASE.items()}
    for key, value in changes.items():
        data[key] = value
    return parse_settings(data, Path("/srv/gw/config.toml"))


def test_an_identical_config_changes_nothing() -> None:
    plan = plan_reload(settings(), settings())
    assert plan.kept_upstreams == {"a", "b"}
    assert not (plan.changed_upstreams or plan.added_upstreams or plan.removed_upstreams)
    assert not (plan.listeners or plan.tls or plan.admin or plan.routes or plan.cache)
    assert plan.summary() == "nothing the gateway serves by"


def test_pools_routes_and_ports_are_told_apart() -> None:
    new = settings(
        gateway={"http_port": 18080, "https_port": 18453, "workers": 2},
        upstreams={
            "a": {"servers": ["http://127.0.0.1:9001", "http://127.0.0.1:9005"]},
            "c": {"servers": ["http://127.0.0.1:9004"]},
        },
        routes=[{"path_prefix": "/", "upstream": "c"}],
    )
    plan = plan_reload(settings(), new)
    assert (plan.changed_upstreams, plan.added_upstreams, plan.removed_upstreams) == (
        {"a"},
        {"c"},
        {"b"},
    )
    assert plan.routes and plan.listeners and plan.rebind_https and not plan.rebind_http
    assert plan.needs_restart == ["[gateway] workers = 2 applies at the next restart (running 1)"]
    # (The cache may change too: its store can depend on the number of workers.)
    assert plan.summary().startswith("routes, upstream +c, upstream -b, upstream ~a, https_port")


def test_listener_settings_without_a_port_change_mean_new_listeners_on_the_same_sockets() -> None:
    plan = plan_reload(settings(), settings(gateway={**BASE["gateway"], "http2": False}))
    assert plan.listeners and plan.tls  # ALPN changes with http2
    assert not (plan.rebind_https or plan.rebind_http)


def test_admin_access_log_and_cache_changes_are_seen() -> None:
    plan = plan_reload(
        settings(),
        settings(
            gateway={**BASE["gateway"], "access_log_format": "json"},
            admin={"port": 18444},
            cache={"max_bytes": 1 << 20, "max_entry_bytes": 1 << 10},
        ),
    )
    assert plan.access_log and plan.admin and plan.cache


def test_health_of_kept_servers_carries_over() -> None:
    old_settings, new_settings = (
        settings(),
        settings(
            upstreams={"a": {"servers": ["http://127.0.0.1:9002", "http://127.0.0.1:9007"]}},
            routes=[{"path_prefix": "/", "upstream": "a"}],
        ),
    )
    old = Upstream(old_settings.upstreams["a"])
    kept = next(s for s in old.health if s.port == 9002)
    old.health[kept].record_check(False, "refused", now=1.0)
    old.health[kept].record_check(False, "refused", now=2.0)  # DOWN after two failures
    assert old.health[kept].status is ServerStatus.DOWN
    new = Upstream(new_settings.upstreams["a"])
    assert carry_health(old, new) == 1
    carried = new.health[kept]
    assert carried is not old.health[kept]  # a new record with the new thresholds
    assert (carried.status, carried.last_error, carried.last_checked) == (
        ServerStatus.DOWN,
        "refused",
        2.0,
    )
    fresh = next(s for s in new.health if s.port == 9007)
    assert new.health[fresh].status is ServerStatus.UP and new.health[fresh].last_checked is None
    assert not new.ready.is_set()  # the only carried server is DOWN: hold for a check


def test_a_carried_healthy_server_makes_the_pool_ready_at_once() -> None:
    old = Upstream(settings().upstreams["a"])
    for health in old.health.values():
        health.record_check(True, "200", now=5.0)
    new = Upstream(settings(upstreams={"a": {"servers": ["http://127.0.0.1:9001"]}}).upstreams["a"])
    carry_health(old, new)
    assert new.ready.is_set()


def test_app_switch_keeps_started_requests_on_their_app() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []
        release = asyncio.Event()

        def app(name: str) -> Any:
            async def run(scope: Any, receive: Any, send: Any) -> None:
                seen.append(f"{name} start")
                if scope["slow"]:
                    await release.wait()
                seen.append(f"{name} end")

            return run

        old, new = app("old"), app("new")
        switch = AppSwitch(old)
        slow = asyncio.create_task(switch({"slow": True}, None, None))
        await asyncio.sleep(0)
        switch.current = new
        await switch({"slow": False}, None, None)
        assert switch.in_flight(old) == 1
        drained = asyncio.create_task(switch.drained(old))
        await asyncio.sleep(0)
        assert not drained.done()
        release.set()
        await slow
        await asyncio.wait_for(drained, 1)
        assert switch.in_flight(old) == 0
        await switch.drained(new)  # nothing running: returns at once
        return seen

    assert asyncio.run(scenario()) == ["old start", "new start", "new end", "old end"]
