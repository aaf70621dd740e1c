"""``make run``'s stack (``python -m gateway.stack``) with no Docker: the backend, the products
service as a ``[services.products]`` and the gateway from one config, real processes on free
loopback ports, real TLS.

* the original apps' whole flow through one gateway port, then Ctrl-C stops everything in order
  (gateway first) and leaves no process behind; env_file values never reach the output;
* ``kill -9`` of a products worker and a SIGHUP rolling restart under steady GET load through
  the gateway lose nothing;
* a service that never becomes healthy (stuck, or crash-looping) is reported by name with the
  tail of its output, and the stack exits 1 without starting the gateway.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.outbox import confirmation_path

from e2e.harness import PYTHON, REPO, Gateway, ManagedProcess, free_port, toml_table
from e2e.test_resilience import consecutive_free_ports, steady_gets, wait_until

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple"
SECRET = "s3cr3t-value-from-the-env-file"
JWT_SECRET = "stack-test-" + "y" * 32


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): check its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@dataclass
class StackRun:
    directory: Path
    config: Path
    process: ManagedProcess
    gateway: Gateway
    backend_base: int
    products_base: int

    def pids(self) -> set[int]:
        """The current process of each worker: the last one its supervisor started (a worker
        that crashed on start-up, e.g. because its port was taken for a moment, was replaced)."""
        started = re.findall(
            r"^(\S+) +\| (.+?) starting(?: on port \d+)? \(pid (\d+)\)$",
            self.process.output(),
            re.MULTILINE,
        )
        return set({(who, name): int(pid) for who, name, pid in started}.values())

    def products_pid(self, index: int) -> int | None:
        try:
            url = f"http://127.0.0.1:{self.products_base + index}/products/health"
            return int(httpx.get(url, timeout=2, trust_env=False).json()["pid"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def output_after(self, mark: int) -> str:
        return "\n".join(self.process.lines[mark:])


def stack_config(
    directory: Path,
    *,
    products_workers: int = 2,
    services: dict[str, dict[str, Any]] | None = None,
) -> tuple[Path, dict[str, int]]:
    """A config for the stack; every ``services`` entry gets one port (``ports[name]``)."""
    extra = dict(services or {})
    # One run of free ports for everything, so no two allocations can overlap.
    backend_base = consecutive_free_ports(2 + products_workers + len(extra))
    products_base = backend_base + 2
    ports = {
        "https": free_port(),
        "http": free_port(),
        "backend": backend_base,
        "products": products_base,
    }
    for i, name in enumerate(extra):
        ports[name] = products_base + products_workers + i
        extra[name] = {**extra[name], "base_port": ports[name]}
    config = directory / "config.toml"
    (directory / "products.env").write_text(
        "# the products service's settings\n"
        f"PRODUCTS_DATABASE={directory / 'var' / 'products.db'}\n"
        f"export PRODUCTS_API_SECRET='{SECRET}'\n"
    )
    products = {
        "command": ["python", "-m", "products", "--port", "{port}", "--config", str(config)],
        "workers": products_workers,
        "base_port": products_base,
        "cwd": str(REPO),
        "env_file": "products.env",
        "health_path": "/products/health",
        "graceful_timeout": 3.0,
    }
    text = (
        toml_table(
            "[gateway]",
            {"http_port": ports["http"], "https_port": ports["https"], "hostnames": ["localhost"]},
        )
        + toml_table("[tls]", {"dir": "certs"})
        + toml_table(
            "[backend]",
            {"base_port": backend_base, "workers": 2, "graceful_timeout": 3.0},
        )
        + toml_table(
            "[upstreams.backend]",
            {"servers": [f"http://127.0.0.1:{backend_base + i}" for i in range(2)]},
        )
        + toml_table("[services.products]", products)
        + toml_table("[[routes]]", {"path_prefix": "/", "upstream": "backend"})
        + toml_table("[[routes]]", {"path_prefix": "/products", "upstream": "products"})
        + toml_table("[cache]", {"enabled": False})
    )
    for name, values in extra.items():
        text += toml_table(f"[services.{name}]", values)
    config.write_text(text)
    return config, ports


@contextmanager
def running_stack(directory: Path, **kw: Any) -> Iterator[StackRun]:
    config, ports = stack_config(directory, **kw)
    process = ManagedProcess(
        [PYTHON, "-m", "gateway.stack", "--config", str(config)],
        env={"BACKEND_JWT_SECRET": JWT_SECRET},
    )
    try:
        line = process.wait_for_line("all services up", 60)
        assert line is not None, process.output()
        gateway = Gateway(directory, config, ports["http"], ports["https"], process)
        yield StackRun(directory, config, process, gateway, ports["backend"], ports["products"])
    finally:
        process.stop(timeout=30)


def create_admin(config: Path, username: str) -> None:
    result = subprocess.run(
        [PYTHON, str(REPO / "run_backend.py"), "create-admin", "--config", str(config)]
        + ["--username", username, "--email", f"{username}@example.com", "--password-stdin"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "BACKEND_JWT_SECRET": JWT_SECRET},
    )
    assert result.returncode == 0, result.stderr


def test_original_flow_through_one_port_then_ctrl_c_stops_all_in_order(tmp_path: Path) -> None:
    with running_stack(tmp_path) as s:
        with s.gateway.client() as client:
            # register -> the e-mail with the link lands in the outbox -> confirm -> login
            body = {"username": "alice", "email": "alice@example.com", "password": PASSWORD}
            response = client.post("/register", json=body)
            assert response.status_code == 201, response.text
            path = confirmation_path(tmp_path / "var" / "outbox", "alice@example.com")
            assert client.get(path).json() == {"message": "Verification completed"}
            login = {"username": "alice", "password": PASSWORD}
            token = client.post("/login", json=login).json()["access_token"]
            alice = {"Authorization": f"Bearer {token}"}

            # products CRUD as an admin; anyone reads; a plain user may not write
            create_admin(s.config, "boss")
            login = {"username": "boss", "password": PASSWORD}
            token = client.post("/login", json=login).json()["access_token"]
            boss = {"Authorization": f"Bearer {token}"}
            product = {"name": "Lamp", "description": "", "price": "19.99", "stock": 3}
            response = client.post("/products", json=product, headers=boss)
            assert response.status_code == 201, response.text
            lamp = response.json()
            assert lamp["price"] == "19.99"
            assert client.post("/products", json=product, headers=alice).status_code == 403
            assert client.get("/products").json() == [lamp]
            response = client.patch(f"/products/{lamp['id']}", json={"stock": 2}, headers=boss)
            assert response.json()["stock"] == 2
            bad = client.post("/products", json={**product, "price": "1.999"}, headers=boss)
            assert bad.status_code == 400 and "price" in bad.json()["errors"]
            response = client.delete(f"/products/{lamp['id']}", headers=boss)
            assert response.json() == {"message": "Product deleted."}
            assert client.get(f"/products/{lamp['id']}").status_code == 404
            assert client.get("/products/openapi.json").json()["openapi"].startswith("3.")

            # the random array, then logout: the token is dead at the backend and at products
            response = client.post(
                "/generate_random_array", json={"sentence": "a b c"}, headers=alice
            )  # noqa: E501
            assert response.status_code == 200 and len(response.json()["random_array"]) == 500
            assert client.post("/logout", headers=boss).status_code == 200
            assert client.post("/products", json=product, headers=boss).status_code == 401
            assert client.get("/users", headers=boss).status_code == 401

        pids = s.pids()
        assert len(pids) >= 6, s.process.output()  # backend sup. + 2 workers, 2 products, gateway
        assert [pid for pid in pids if not alive(pid)] == [], s.process.output()
        mark = len(s.process.lines)
        s.process.signal(signal.SIGINT)
        assert s.process.wait(60) == 0, s.process.output()
        output = s.process.output()
        assert [pid for pid in pids if alive(pid)] == [], output

        # in order: the gateway stopped before the services, the services before the backend
        stopped = s.output_after(mark)
        order = [stopped.index(f"{name} (pid") for name in ("gateway", "products 0", "backend")]
        assert order == sorted(order), stopped
        # each process's lines carry its name; env_file values are never shown
        assert re.search(r"^products-1 +\| ", output, re.MULTILINE), output
        assert re.search(r"^gateway +\| .*gateway ready", output, re.MULTILINE), output
        assert SECRET not in output


def test_kill_9_and_sighup_of_a_service_under_load_lose_no_get(tmp_path: Path) -> None:
    with running_stack(tmp_path) as s:
        victim = s.products_pid(0)
        assert victim is not None
        mark = len(s.process.lines)

        async def kill() -> None:
            os.kill(victim, signal.SIGKILL)

        result = asyncio.run(
            steady_gets(
                s.gateway, rate=100, seconds=4, during=kill, at=1.0, path="/products/health"
            )
        )
        assert result.failures == 0, result.statuses
        assert result.statuses[200] == 400
        restarted = wait_until(
            lambda: (pid := s.products_pid(0)) not in (None, victim) and pid, 15, "a new worker"
        )
        output = s.output_after(mark)
        assert f"products 0 (pid {victim}) died (killed by SIGKILL)" in output, output
        assert re.search(
            rf"products 0 starting on port {s.products_base} \(pid {restarted}\)", output
        )

        # SIGHUP: the products workers are restarted one at a time, still without a failure
        before = {i: s.products_pid(i) for i in range(2)}
        mark = len(s.process.lines)

        async def hup() -> None:
            s.process.signal(signal.SIGHUP)

        result = asyncio.run(
            steady_gets(s.gateway, rate=100, seconds=6, during=hup, at=0.5, path="/products/health")
        )
        assert result.failures == 0, result.statuses
        done = re.compile(r"^stack +\| rolling restart complete", re.MULTILINE)
        wait_until(lambda: done.search(s.output_after(mark)), 30, "the stack's roll")
        after = {i: s.products_pid(i) for i in range(2)}
        assert all(after[i] not in (None, before[i]) for i in range(2)), (before, after)
        rolled = s.output_after(mark)
        # one at a time: the second worker is stopped only after the first replacement is up
        assert rolled.index("products 0 restarted") < rolled.index("restarting products 1")
        # and the gateway reloaded its configuration, without a failed request either
        assert re.search(r"^gateway +\| .*configuration reloaded from", rolled, re.MULTILINE), (
            rolled
        )


@pytest.mark.parametrize(
    ("name", "code", "expected"),
    [
        # listens nowhere: never healthy
        ("stuck", "print('warming up the cache', flush=True); import time; time.sleep(60)",
         "warming up the cache"),
        # dies at once, again and again (with back-off)
        ("crashy", "import sys; print('boom: no database', flush=True); sys.exit(3)",
         "boom: no database"),
    ],
)  # fmt: skip
def test_a_service_that_never_becomes_healthy_is_reported(
    tmp_path: Path, name: str, code: str, expected: str
) -> None:
    service = {"command": ["python", "-c", code], "start_timeout": 3.0, "graceful_timeout": 1.0}
    config, ports = stack_config(tmp_path, products_workers=1, services={name: service})
    port = ports[name]
    process = ManagedProcess(
        [PYTHON, "-m", "gateway.stack", "--config", str(config)],
        env={"BACKEND_JWT_SECRET": JWT_SECRET},
    )
    try:
        assert process.wait(60) == 1
    finally:
        process.stop()
    output = process.output()
    report = f"{name} is not healthy on http://127.0.0.1:{port}/health 3s after it was started"
    if name == "crashy":  # given up before start_timeout: it will not heal by waiting
        report = f"{name} exited 3 times while starting; its last output:"
    assert report in output, output
    assert re.search(rf"its last output:\n\S+ +\| +{re.escape(expected)}", output), output
    assert "gateway starting" not in output
    if name == "crashy":
        assert re.search(r"crashy \(pid \d+\) died \(exit code 3\) .*restarting in 0\.5s", output)
    assert [
        pid for pid in {int(p) for p in re.findall(r"\(pid (\d+)\)", output)} if alive(pid)
    ] == []
