"""The gateway process as an operator sees it: ``--check`` and a graceful SIGTERM."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from e2e.harness import PYTHON, REPO, StackConfig, one_pool, sigterm_while_held, stack

pytestmark = pytest.mark.e2e

IN_FLIGHT = 20


def check(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "run_gateway.py", "--check", "--config", str(config_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_accepts_a_valid_config(tmp_path: Path) -> None:
    """A valid config exits 0 with a one-line summary naming the file and the listeners."""
    config = StackConfig(
        pools={"main": ["http://127.0.0.1:9001"]}, routes=[{"path_prefix": "/", "upstream": "main"}]
    )
    path = tmp_path / "config.toml"
    path.write_text(config.render(tmp_path, 18080, 18443))
    result = check(path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0] and "18443" in lines[0] and "18080" in lines[0]


def test_check_accepts_the_shipped_config() -> None:
    """The repository's own config.toml passes --check."""
    result = check(REPO / "config.toml")
    assert result.returncode == 0, result.stderr


BAD_CONFIG = """\
[gateway]
colour = "blue"
access_log = 3
http_port = 8443
https_port = 8443

[backend]
base_port = 8442
workers = 2
smtp_port = 70000

[upstreams.main]
servers = ["http://127.0.0.1:9001"]

[[routes]]
path_prefix = "/"
upstream = "nowhere"
"""

# (key as written in the message, bad value, what is allowed): one error line each.
EXPECTED_ERRORS = [
    ("[gateway] colour", "", "allowed keys: host, http_port"),
    ("[gateway] access_log", "3", "must be true, false or a file path string"),
    ("[backend] smtp_port", "70000", "an integer from 1 to 65535"),
    ("[[routes]] #1 upstream", "'nowhere'", "no such upstream (defined: main)"),
    ("[gateway] https_port", "8443", "clashes with http_port"),
    ("[gateway] http_port", "8443", "clashes with the backend workers' ports 8442-8443"),
]


def test_check_reports_every_error_at_once(tmp_path: Path) -> None:
    """A config with six problems exits 1 and prints one line for each, naming the file, the
    key, the bad value and what is allowed."""
    path = tmp_path / "bad.toml"
    path.write_text(BAD_CONFIG)
    result = check(path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    for key, value, allowed in EXPECTED_ERRORS:
        matching = [
            line
            for line in lines
            if line.startswith(str(path)) and key in line and value in line and allowed in line
        ]
        assert len(matching) == 1, (key, result.stderr)


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    """20 requests in flight when SIGTERM arrives all complete with 200 (the upstream only
    answers them once the gateway is shutting down), then the gateway exits 0."""

    build = one_pool()

    with stack(tmp_path, ["hold"], build) as s, s.gateway.client(timeout=20) as client:
        upstream = s.upstreams["hold"]
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures = [pool.submit(client.get, "/hold") for _ in range(IN_FLIGHT)]
            statuses = [r.status_code for r in sigterm_while_held(s, upstream, futures)]
        assert statuses == [200] * IN_FLIGHT
        assert s.gateway.process.wait(timeout=15) == 0
