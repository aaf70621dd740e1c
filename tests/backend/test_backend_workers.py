"""End to end: run_backend.py with 4 real worker processes on free loopback ports.

Waiting is event-driven where the system offers an event: the supervisor's output lines
("worker 1 listening ... (pid N)", "rolling restart complete") and pidfd readiness for a
process's exit.  Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from support.outbox import confirmation_path
from support.postgres import PostgresServer

from gateway.runtime.supervisor import restart_delay

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4
PASSWORD = "correct horse battery staple"


def test_restart_delay_backs_off_and_caps() -> None:
    assert [restart_delay(n) for n in range(1, 6)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == 30.0


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(count: int) -> int:
    for _ in range(100):
        base = random.randrange(20000, 60000 - count)
        if all(_port_is_free(port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def wait_for_exit(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (pidfd: woken by the exit itself, no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


class Backend:
    """run_backend.py as a subprocess, with its stdout collected line by line."""

    def __init__(self, tmp_path: Path, database: str = "var/backend.db") -> None:
        self.base_port = free_base_port(WORKERS)
        self.dir = tmp_path
        self.config = tmp_path / "config.toml"
        self.config.write_text(
            "[backend]\n"
            f"base_port = {self.base_port}\n"
            f"workers = {WORKERS}\n"
            f'database = "{database}"\n'
            'outbox = "var/outbox"\n'
            'public_url = "https://localhost:8443"\n'
            "graceful_timeout = 5.0\n"
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process: subprocess.Popen[str] | None = None

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.base_port + index}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "BACKEND_JWT_SECRET"}
        self.stderr = (self.dir / "stderr.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "run_backend.py"), "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(rf"all {WORKERS} workers up")

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<EOF>")
            self._changed.notify_all()

    def wait_for(self, pattern: str, *, after: int = 0, timeout: float = 60.0) -> re.Match[str]:
        """The first output line from index ``after`` on that matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if match := regex.search(line):
                        return match
                if "<EOF>" in self.lines:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._changed.wait(remaining):
                    break
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    def mark(self) -> int:
        with self._changed:
            return len(self.lines)

    def worker_pids(self) -> dict[int, int]:
        pids = {}
        for index in range(WORKERS):
            response = httpx.get(f"{self.url(index)}/health", timeout=5)
            assert response.status_code == 200
            assert response.json()["worker"] == index
            pids[index] = response.json()["pid"]
        return pids

    def all_pids_seen(self) -> set[int]:
        with self._changed:
            text = "\n".join(self.lines)
        return {int(pid) for pid in re.findall(r"starting on port \d+ \(pid (\d+)\)", text)}

    def create_admin(self, username: str) -> None:
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "run_backend.py"),
                "create-admin",
                "--config",
                str(self.config),
                "--username",
                username,
                "--email",
                f"{username}@example.com",
                "--password-stdin",
            ],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process is not None and process.stdout is not None:
            process.stdout.close()
        for pid in self.all_pids_seen():
            if not wait_for_exit(pid, 10):
                os.kill(pid, signal.SIGKILL)
        self.stderr.close()


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    """A stack of one's own, for the tests that stop it."""
    stack = Backend(tmp_path)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def postgres_backend(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer
) -> Iterator[Backend]:
    """The same stack on PostgreSQL."""
    stack = Backend(tmp_path_factory.mktemp("backend-pg"), postgres.new_database())
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def shared_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """One stack for the tests that leave it running with every worker up (saves start-ups)."""
    stack = Backend(tmp_path_factory.mktemp("backend"))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.parametrize("stack", ["shared_backend", "postgres_backend"])
async def test_concurrent_traffic_across_workers(
    stack: str, request: pytest.FixtureRequest
) -> None:
    """~250 requests from 40 users spread over 4 workers: no 5xx, no lost write, no duplicate,
    and a logout on one worker is seen by the others at once; on SQLite and on PostgreSQL."""
    shared_backend: Backend = request.getfixturevalue(stack)
    shared_backend.create_admin("boss")
    clients = [
        httpx.AsyncClient(base_url=shared_backend.url(i), timeout=30) for i in range(WORKERS)
    ]
    limit = asyncio.Semaphore(16)
    statuses: list[int] = []

    async def call(worker: int, method: str, path: str, **kwargs: object) -> httpx.Response:
        async with limit:
            response = await clients[worker % WORKERS].request(method, path, **kwargs)  # type: ignore[arg-type]
        statuses.append(response.status_code)
        assert response.status_code < 500, response.text
        return response

    async def user_journey(n: int) -> None:
        name = f"load{n}"
        response = await call(
            n,
            "POST",
            "/register",
            json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
        )
        assert response.status_code == 201
        user_id = response.json()["user"]["id"]
        path = confirmation_path(shared_backend.dir / "var" / "outbox", f"{name}@example.com")
        assert (await call(n + 1, "GET", path)).status_code == 200
        response = await call(
            n + 2, "POST", "/login", json={"username": name, "password": PASSWORD}
        )
        assert response.status_code == 200
        auth = {"Authorization": f"Bearer {response.json()['access_token']}"}
        assert (await call(n + 3, "GET", f"/user/{user_id}", headers=auth)).status_code == 200
        # logout on one worker, then the token is dead on every other worker
        assert (await call(n, "POST", "/logout", headers=auth)).status_code == 200
        for other in range(1, WORKERS):
            response = await call(n + other, "GET", f"/user/{user_id}", headers=auth)
            assert response.status_code == 401

    try:
        await asyncio.gather(*(user_journey(n) for n in range(40)))
        response = await call(0, "POST", "/login", json={"username": "boss", "password": PASSWORD})
        auth = {"Authorization": f"Bearer {response.json()['access_token']}"}
        listed = (await call(1, "GET", "/users?limit=1000", headers=auth)).json()
    finally:
        for client in clients:
            await client.aclose()
    assert sorted(u["username"] for u in listed) == sorted(
        ["boss"] + [f"load{n}" for n in range(40)]
    )  # none lost, none twice
    assert all(u["activated"] for u in listed)
    assert len(statuses) >= 200
    stderr = (shared_backend.dir / "stderr.log").read_text()
    assert "database is locked" not in stderr and "Traceback" not in stderr


@pytest.mark.e2e
def test_killed_worker_is_restarted(shared_backend: Backend) -> None:
    pids = shared_backend.worker_pids()
    mark = shared_backend.mark()
    os.kill(pids[1], signal.SIGKILL)
    shared_backend.wait_for(
        r"worker 1 \(pid \d+\) died \(killed by SIGKILL\)", after=mark, timeout=10
    )
    match = shared_backend.wait_for(
        r"worker 1 listening on \S+ \(pid (\d+)\)", after=mark, timeout=30
    )
    new_pid = int(match.group(1))
    assert new_pid != pids[1]
    response = httpx.get(f"{shared_backend.url(1)}/health", timeout=5)
    assert response.json() == {"status": "ok", "database": "ok", "worker": 1, "pid": new_pid}
    # the others were not disturbed
    assert {i: p for i, p in shared_backend.worker_pids().items() if i != 1} == {
        i: p for i, p in pids.items() if i != 1
    }


@pytest.mark.e2e
def test_sighup_rolls_through_the_workers(shared_backend: Backend) -> None:
    assert shared_backend.process is not None
    before = shared_backend.worker_pids()
    done = threading.Event()
    rounds: list[int] = []  # healthy workers per round of probes

    def probe() -> None:
        with httpx.Client(timeout=2) as client:
            while not done.is_set():
                healthy = 0
                for index in range(WORKERS):
                    try:
                        healthy += (
                            client.get(f"{shared_backend.url(index)}/health").status_code == 200
                        )
                    except httpx.HTTPError:
                        pass
                rounds.append(healthy)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        mark = shared_backend.mark()
        shared_backend.process.send_signal(signal.SIGHUP)
        shared_backend.wait_for("rolling restart complete", after=mark, timeout=90)
    finally:
        done.set()
        prober.join(timeout=30)
    after = shared_backend.worker_pids()
    assert all(after[i] != before[i] for i in range(WORKERS))
    assert rounds and min(rounds) >= 1
    for pid in before.values():
        assert wait_for_exit(pid, 5)


@pytest.mark.e2e
@pytest.mark.anyio
async def test_sigterm_finishes_in_flight_requests_and_leaves_no_worker(backend: Backend) -> None:
    process = backend.process
    assert process is not None
    pids = backend.worker_pids()
    first_chunk_sent, release = asyncio.Event(), asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"username": "nobody", '
        first_chunk_sent.set()  # asked for more: the headers and first chunk are on the wire
        await release.wait()
        yield b'"password": "whatever"}'

    async with httpx.AsyncClient(base_url=backend.url(0), timeout=30) as client:
        in_flight = asyncio.create_task(
            client.post("/login", content=slow_body(), headers={"Content-Type": "application/json"})
        )
        await first_chunk_sent.wait()
        mark = backend.mark()
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(backend.wait_for, "SIGTERM: stopping", after=mark, timeout=10)
        release.set()
        response = await in_flight
    assert response.status_code == 401  # answered, not cut off

    assert await asyncio.to_thread(process.wait, 30) == 0
    backend.wait_for("all workers stopped")
    for pid in pids.values():
        assert wait_for_exit(pid, 5), f"worker {pid} outlived the supervisor"


@pytest.mark.e2e
def test_workers_exit_when_the_supervisor_is_killed(backend: Backend) -> None:
    assert backend.process is not None
    pids = backend.worker_pids()
    backend.process.kill()
    backend.process.wait(timeout=10)
    for pid in pids.values():
        assert wait_for_exit(pid, 15), f"worker {pid} orphaned"
