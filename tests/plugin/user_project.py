"""A user's project for the pygateway plugin's tests: files written with pytester, run in a
pytest subprocess that loads the plugin from its installed entry point, as any project would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# What a careful user project has: warnings are errors, markers must be registered.
USER_INI = """\
[pytest]
filterwarnings = error
addopts = --strict-markers -p no:cacheprovider
"""


def processes_under(root: Path) -> list[str]:
    """Processes whose command line or working directory is under ``root``: the gateways a
    user project's tests started (their config files are there) and their worker processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if str(root) in cmdline or cwd.startswith(str(root)):
            found.append(f"{entry.name}: {cmdline}")
    return found


class UserProject:
    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.path = pytester.path
        pytester.makeini(USER_INI)

    def write(self, name: str, source: str) -> None:
        (self.path / name).write_text(source)

    def run(self, *args: str, check_processes: bool = True) -> pytest.RunResult:
        """Run the project's tests; afterwards no process they started is left."""
        result = self.pytester.runpytest_subprocess(*args, timeout=180)
        if check_processes:
            assert processes_under(self.path) == [], result.stdout.str()
        return result
