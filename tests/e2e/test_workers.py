"""``[gateway] workers = 2``: two processes share the listeners (Nginx's worker_processes).
A worker that dies is replaced without losing the service; SIGTERM stops all of them."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from e2e.harness import one_pool, stack

pytestmark = pytest.mark.e2e


def children(pid: int) -> list[int]:
    """Worker processes of the gateway (multiprocessing's resource tracker excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmdline:
            found.append(int(entry))
    return found


build = one_pool(gateway={"workers": 2, "graceful_timeout": 3.0})


def test_two_workers_serve_survive_a_crash_and_stop_together(tmp_path: Path) -> None:
    with stack(tmp_path, ["a"], build) as s:
        gw = s.gateway
        assert "(2 workers)" in gw.wait_for_log("gateway ready")
        workers = children(gw.process.pid)
        assert len(workers) == 2

        with gw.client() as client:
            assert all(client.get("/echo").status_code == 200 for _ in range(20))

        os.kill(workers[0], signal.SIGKILL)
        died = gw.wait_for_log(f"(pid {workers[0]}) died", timeout=5)
        assert "killed by SIGKILL" in died and "; restarting in " in died
        index = died.split("gateway worker ")[1].split()[0]
        # Only lines after "died" are read from here on: the replacement's start.
        assert gw.process.wait_for_line(f"gateway worker {index} starting", 5) is not None
        # The survivor keeps serving meanwhile; new connections reach either worker.
        for _ in range(20):
            with gw.client() as client:
                assert client.get("/echo").status_code == 200
        replaced = children(gw.process.pid)
        assert len(replaced) == 2 and workers[0] not in replaced

        gw.process.signal(signal.SIGTERM)
        assert gw.process.wait(20) == 0
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{pid}").exists() for pid in replaced):
            assert time.monotonic() < deadline, "a gateway worker outlived its parent"
            time.sleep(0.05)
