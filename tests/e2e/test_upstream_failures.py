"""When upstreams fail: 502 for a dead server (a lone one is never marked DOWN), 504 for a stalled
one, retries onto a healthy server, no spurious 502 from a stale pooled connection, and a connect
that reached its own socket (a TCP self-connect) taken for the refusal it is."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness import (
    EchoUpstream,
    KeepAliveRaceUpstream,
    Stack,
    StackConfig,
    TomlValue,
    gateway,
    one_pool,
    stack,
)
from gateway.config import UpstreamServer, UpstreamSettings
from gateway.errors import UpstreamConnectError
from gateway.upstream.pool import ConnectionPool

pytestmark = pytest.mark.e2e

READ_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    """A port bound but not listening for the whole module: connecting to it is refused, and
    no other process can start listening on it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory, dead_port: int) -> Iterator[Stack]:
    """Pools: /dead -> a dead server; /mixed -> the dead one and a live one; /stalled -> a
    live one with a 0.5 s read timeout.  Active checks are rare, so only traffic marks a
    server DOWN here."""
    dead = f"http://127.0.0.1:{dead_port}"

    def build(upstreams: dict[str, EchoUpstream]) -> StackConfig:
        live = upstreams["live"].url
        rare_checks: dict[str, TomlValue] = {"health_interval": 60.0}
        return StackConfig(
            pools={"dead": [dead], "mixed": [dead, live], "stalled": [live]},
            pool_options={
                "dead": rare_checks,
                "mixed": rare_checks,
                "stalled": {**rare_checks, "read_timeout": READ_TIMEOUT},
            },
            routes=[
                {"path_prefix": "/dead", "upstream": "dead", "strip_prefix": True},
                {"path_prefix": "/mixed", "upstream": "mixed", "strip_prefix": True},
                {"path_prefix": "/stalled", "upstream": "stalled", "strip_prefix": True},
            ],
        )

    with stack(tmp_path_factory.mktemp("faults"), ["live"], build) as s:
        yield s


@pytest.fixture
def faults_client(faults: Stack) -> Iterator[httpx.Client]:
    with faults.gateway.client() as client:
        yield client


def test_path_without_a_route_gives_404(faults_client: httpx.Client) -> None:
    """No [[routes]] path_prefix matches: 404 with a JSON message from the gateway."""
    response = faults_client.get("/nowhere")
    assert response.status_code == 404
    assert "/nowhere" in response.json()["message"]


def test_dead_lone_upstream_gives_502_each_time(faults: Stack, faults_client: httpx.Client) -> None:
    """A refused connect is a 502 with a JSON message.  This used to mark the server DOWN at
    once and answer 503 to everybody until the next active check; since issue 13 the only
    server of a pool is never marked DOWN by traffic (Nginx ignores max_fails for a lone
    server), so each request tries it again and says what failed.  (503 for a pool whose
    servers are all DOWN and fail again: tests/e2e/test_abuse.py.)"""
    for _ in range(2):
        response = faults_client.get("/dead/echo")
        assert response.status_code == 502
        assert response.headers["content-type"] == "application/json"
        assert "refused" in response.json()["message"]
    assert not faults.gateway.log_lines("upstream dead server")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_refused_connect_is_retried_on_another_server(
    faults: Stack, faults_client: httpx.Client, method: str
) -> None:
    """With one dead and one live server, every request succeeds: a refused connect means
    nothing was sent, so even a POST may go to the other server."""
    statuses = [
        faults_client.request(method, "/mixed/echo", content=b"body").status_code for _ in range(6)
    ]
    assert statuses == [200] * 6


def test_stalled_upstream_gives_504(faults_client: httpx.Client) -> None:
    """No upstream byte within read_timeout (0.5 s) -> 504 with a JSON message, well before
    the upstream would have answered (3 s); the pool keeps working afterwards."""
    started = time.monotonic()
    response = faults_client.get("/stalled/slow?s=3")
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["message"]
    assert READ_TIMEOUT <= elapsed < 2.5
    assert faults_client.get("/stalled/echo").status_code == 200


def test_no_spurious_502_when_the_upstream_closes_idle_connections(tmp_path: Path) -> None:
    """The upstream closes idle keep-alive connections after 1 s, the gateway's pool would
    keep them 4 s: pauses of about 1 s (some just at the upstream's deadline) between
    requests must never surface as an error."""

    build = one_pool(pool={"keepalive_timeout": 4.0}, gateway={"access_log": False})

    pauses = iter([0.97, 0.99, 1.0, 1.0, 1.01, 1.02, 1.04, 1.08])
    statuses = []
    with stack(tmp_path, ["short"], build, keep_alive=1) as s, s.gateway.client() as client:
        for i in range(200):
            if i % 25 == 24:
                time.sleep(next(pauses))  # idle time is what this test is about
            statuses.append(client.get("/echo").status_code)
    assert [(i, st) for i, st in enumerate(statuses) if st != 200] == []


@pytest.mark.parametrize("servers", [1, 2])
def test_reused_connection_closed_by_the_upstream_is_retried(tmp_path: Path, servers: int) -> None:
    """A pooled connection that the upstream closes as our GET arrives (its idle timer fired
    at that moment) is a normal race, not a failure: the GET is retried on a fresh
    connection, the client sees 200 every time, and the server is not marked DOWN."""
    with contextlib.ExitStack() as exits:
        racers = [exits.enter_context(KeepAliveRaceUpstream()) for _ in range(servers)]
        config = StackConfig(
            pools={"race": [r.url for r in racers]},
            pool_options={"race": {"health_interval": 60.0}},
            routes=[{"path_prefix": "/", "upstream": "race"}],
            gateway={"access_log": False},
        )
        gw = exits.enter_context(gateway(tmp_path, config))
        client = exits.enter_context(gw.client())
        statuses = [client.get("/x").status_code for _ in range(4 * servers)]
    assert sum(r.dropped for r in racers) > 0  # the race did happen
    assert statuses == [200] * (4 * servers)


class _SelfConnectingLoop:
    """The running loop, except that its connects leave from the port they go to: the TCP
    self-connect a dead upstream on an ephemeral port gets now and then, made certain."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def create_connection(self, factory: Any, host: str, port: int, **kwargs: Any) -> Any:
        return self._loop.create_connection(factory, host, port, local_addr=(host, port), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


def test_a_connect_that_reaches_its_own_socket_is_refused_and_frees_the_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pool = ConnectionPool(
        UpstreamServer("127.0.0.1", port),
        UpstreamSettings(name="app", servers=(UpstreamServer("127.0.0.1", port),)),
    )

    async def connect() -> str:
        loop = _SelfConnectingLoop(asyncio.get_running_loop())
        with pytest.raises(UpstreamConnectError) as refused:
            await pool._connect(loop)  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the aborted transport closes on the next turn
        return str(refused.value)

    message = asyncio.run(connect())
    assert message == (
        f"cannot connect to upstream 127.0.0.1:{port}: connection refused (nothing listens "
        f"there; the connect reached the gateway's own socket)"
    )
    assert pool.opened == 0
    # Closed with a reset, not left in TIME_WAIT: the upstream can bind its port at once
    # (no SO_REUSEADDR here, which would step over a TIME_WAIT entry).
    with socket.socket() as upstream:
        upstream.bind(("127.0.0.1", port))
        upstream.listen()
