"""``make run``'s orchestrator (``python -m gateway.stack``): the backend supervisor and the
gateway from one config, a backend answer through the gateway over TLS, and Ctrl-C stops
every process it started."""

from __future__ import annotations

import os
import re
import signal
import ssl
from pathlib import Path

import httpx
import pytest

from e2e.harness import PYTHON, ManagedProcess, free_port, toml_table
from e2e.test_resilience import consecutive_free_ports

pytestmark = pytest.mark.e2e


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


def test_stack_serves_through_the_gateway_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    base = consecutive_free_ports(2)
    https_port, http_port = free_port(), free_port()
    servers = [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
    config = tmp_path / "config.toml"
    config.write_text(
        toml_table(
            "[gateway]",
            {"http_port": http_port, "https_port": https_port, "hostnames": ["localhost"]},
        )
        + toml_table("[tls]", {"dir": "certs"})
        + toml_table("[backend]", {"base_port": base, "workers": 2, "graceful_timeout": 3.0})
        + toml_table("[upstreams.backend]", {"servers": servers})
        + toml_table("[[routes]]", {"path_prefix": "/", "upstream": "backend"})
    )
    stack = ManagedProcess(
        [PYTHON, "-m", "gateway.stack", "--config", str(config)],
        env={"BACKEND_JWT_SECRET": "stack-test-" + "y" * 32},
    )
    try:
        assert stack.wait_for_line("gateway ready", 30) is not None, stack.output()
        assert stack.wait_for_line("all 2 workers up", 30) or "all 2 workers up" in stack.output()
        context = ssl.create_default_context(cafile=str(tmp_path / "certs" / "ca.pem"))
        with httpx.Client(verify=context, trust_env=False, timeout=10) as client:
            response = client.get(f"https://localhost:{https_port}/health")
        assert response.status_code == 200
        assert response.json()["status"] == "ok"

        output = stack.output()
        pids = {int(p) for p in re.findall(r"\(pid (\d+)\)", output)}
        assert len(pids) >= 4, output  # supervisor + 2 workers + gateway at least
        assert all(alive(pid) for pid in pids)

        stack.signal(signal.SIGINT)
        assert stack.wait(30) == 0, stack.output()
        leftovers = [pid for pid in pids if alive(pid)]
        assert leftovers == [], stack.output()
    finally:
        stack.stop()
