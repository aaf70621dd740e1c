"""``gateway.running.start_gateway`` driven directly, in this process: the busy-port retry and
a clean stop (no process, no thread left)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import httpx
import pytest

from gateway.asgi import Receive, Scope, Send
from gateway.testing import running

pytestmark = pytest.mark.e2e


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def test_port_taken_before_the_gateway_binds_it_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What happens under pytest-xdist when another worker wins the race for a port."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        busy_port = busy.getsockname()[1]
        picks = iter([busy_port])
        real_free_port = running.free_port
        monkeypatch.setattr(running, "free_port", lambda: next(picks, None) or real_free_port())
        with running.start_gateway(tmp_path, hello) as gw:
            assert gw.https_port != busy_port
            with gw.client() as client:
                assert client.get("/").text == "hello"
    log = (tmp_path / "gateway.log").read_text()
    refusals = [line for line in log.splitlines() if "already in use" in line]
    assert len(refusals) == 1  # the first attempt, one line naming the key
    assert f"[gateway] https_port = {busy_port}: 127.0.0.1:{busy_port}" in refusals[0]
    assert log.count("gateway ready") == 1


def test_stop_leaves_no_process_and_no_thread(tmp_path: Path) -> None:
    gw = running.start_gateway(tmp_path, hello)
    assert any(t.name.startswith("pygateway-app:") for t in threading.enumerate())
    gw.stop()
    assert gw.process.proc.returncode == 0  # SIGTERM: a graceful stop, not a kill
    with pytest.raises(ProcessLookupError):
        os.killpg(gw.pid, 0)  # no process of its group is left
    assert not any(t.name.startswith("pygateway-") for t in threading.enumerate())
    with pytest.raises(httpx.ConnectError):
        httpx.get(gw.url, verify=gw.ssl_context())
    gw.stop()  # idempotent
