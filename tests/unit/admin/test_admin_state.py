"""What one process tells the admin API: purging by path prefix, DRAINING servers a reload
removed, and the control socket's framing (pickles of any size, listening sockets passed as
descriptors)."""

from __future__ import annotations

import asyncio
import socket
import threading
from types import SimpleNamespace
from typing import Any

from gateway.admin.state import describe_upstreams, purge_cache
from gateway.cache.store import ResponseCache
from gateway.cache.stores.memory import MemoryStore
from gateway.cache.storing import make_stored_response
from gateway.config import UpstreamServer, UpstreamSettings
from gateway.runtime.control import recv_message, send_message
from gateway.upstream.group import Upstream


def stored(body: bytes = b"x") -> Any:
    headers = [(b"cache-control", b"max-age=60"), (b"content-length", b"%d" % len(body))]
    return make_stored_response(200, headers, body, [], 1000.0, 1000.0)


def test_purge_by_path_prefix_on_whole_keys() -> None:
    store = ResponseCache(1 << 20, 1 << 16)
    for key in (
        "https://localhost/static/app.js",
        "https://localhost/static/css/a.css?v=2",
        "https://app.localhost:8443/static/x",
        "https://localhost/staticky",
        "https://localhost/api/users",
    ):
        store.put(key, stored())
    cache = SimpleNamespace(store=MemoryStore(store))  # purge_cache awaits the store
    gateway: Any = SimpleNamespace(app=SimpleNamespace(cache=cache))
    assert asyncio.run(purge_cache(gateway, "/static/")) == 3
    assert sorted(store.primary_keys()) == [
        "https://localhost/api/users",
        "https://localhost/staticky",
    ]
    assert asyncio.run(purge_cache(gateway, "/")) == 2 and len(store) == 0
    no_cache: Any = SimpleNamespace(app=SimpleNamespace(cache=None))
    assert asyncio.run(purge_cache(no_cache, "/")) == 0


def test_removed_servers_are_draining_while_requests_run_on_them() -> None:
    a, b = UpstreamServer("127.0.0.1", 9001), UpstreamServer("127.0.0.1", 9002)
    old = Upstream(UpstreamSettings(name="app", servers=(a, b)))
    new = Upstream(UpstreamSettings(name="app", servers=(b,)))
    old.pools[a].in_flight = 2
    old.pools[b].in_flight = 1  # b is in the new pool too: listed once, by the new one
    (pool,) = describe_upstreams([new], [old])
    assert [(s["url"], s["state"], s["in_flight"]) for s in pool["servers"]] == [
        (b.url, "UP", 0),
        (a.url, "DRAINING", 2),
    ]
    old.pools[a].in_flight = 0  # its last request ended
    (pool,) = describe_upstreams([new], [old])
    assert [s["url"] for s in pool["servers"]] == [b.url]
    gone = Upstream(UpstreamSettings(name="gone", servers=(a,)))
    assert describe_upstreams([new], [gone])[1:] == []  # nothing running: not listed


def test_control_messages_of_any_size_with_descriptors() -> None:
    left, right = socket.socketpair()
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        big = {"op": "reload", "payload": b"x" * 300_000}  # more than a socket buffer
        sender = threading.Thread(target=send_message, args=(left, big, [listener.fileno()]))
        sender.start()
        message, fds = recv_message(right)
        sender.join()
        assert message == big and len(fds) == 1
        received = socket.socket(fileno=fds[0])
        assert received.getsockname() == listener.getsockname()  # the same listening socket
        received.close()
        send_message(left, {"ok": True})
        assert recv_message(right) == ({"ok": True}, [])
    finally:
        for sock in (left, right, listener):
            sock.close()
