"""Every command in the guided tour (``docs/tour.md``) and the labs (``docs/labs/*.md``) runs,
verbatim, against a real stack, and its output is checked, so the docs cannot rot.

How the docs are written so a test can run them:

* a ```` ```sh ```` block is run as it is by ``bash -e -o pipefail`` from the repository root;
  ```` ```sh setup ```` is the one block that sets the variables every command uses (``$CONFIG``,
  ``$GW``, ``$CA``, ``$LAB``) to the documented defaults: the test sets them itself instead,
  to its copy of ``docs/tour/config.toml`` whose ports and data paths it replaces with free
  ports and a temporary directory (the commands are parametrized, never rewritten);
  ```` ```sh background ```` is ``make run ...``: started once for all docs, in its own session,
  and stopped with Ctrl-C (SIGINT) at the end;
* a ```` ```text output ```` block after a command lists lines its output must contain, and
  ```` ```text log ```` lines the stack's output (the ``make run`` terminal, where the trace
  blocks are) must show after the command started, waited for up to ``LOG_TIMEOUT``;
  ``...`` stands for anything.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from e2e.harness import REPO, ManagedProcess, free_port
from e2e.test_resilience import consecutive_free_ports

pytestmark = pytest.mark.e2e

TOUR = REPO / "docs" / "tour.md"
LABS = sorted((REPO / "docs" / "labs").glob("*.md"))
TOUR_CONFIG = REPO / "docs" / "tour" / "config.toml"
FENCE = re.compile(r"^```(\w*)[ \t]*(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
COMMAND_TIMEOUT = 60.0
LOG_TIMEOUT = 30.0
START_TIMEOUT = 120.0  # make run: install check, backend migrations, certificates


@dataclass
class Step:
    kind: str  # "sh", "setup" or "background"
    script: str
    line: int
    output: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def parse(path: Path) -> list[Step]:
    text = path.read_text()
    steps: list[Step] = []
    for match in FENCE.finditer(text):
        lang, tag, body = match.groups()
        line = text.count("\n", 0, match.start()) + 1
        if lang == "sh":
            assert tag in ("", "setup", "background"), f"{path}:{line}: unknown tag {tag!r}"
            steps.append(Step(tag or "sh", body, line))
        elif lang == "text" and tag in ("output", "log"):
            assert steps, f"{path}:{line}: an expectation before any command"
            expected = [item for item in body.splitlines() if item.strip()]
            getattr(steps[-1], tag).extend(expected)
    return steps


def pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part.strip()) for part in expected.split("...")))


def test_the_docs_are_written_to_be_tested() -> None:
    """Every doc has commands, every command an expectation, exactly one setup block and one
    background block (both in the tour)."""
    assert len(LABS) == 5
    for path in [TOUR, *LABS]:
        steps = parse(path)
        assert steps, path
        for step in steps:
            if step.kind == "sh":
                assert step.output or step.log, f"{path}:{step.line}: a command with no check"
    tour = parse(TOUR)
    assert [s.kind for s in tour].count("setup") == 1
    assert [s.kind for s in tour].count("background") == 1
    assert all(s.kind == "sh" for lab in LABS for s in parse(lab))


@dataclass
class TourStack:
    process: ManagedProcess
    env: dict[str, str]

    def wait_for_log(self, expected: list[str], mark: int, where: str) -> None:
        """Each expected line matches some stack output line after ``mark`` (in any order:
        the stack's own lines and the gateway's come from different processes)."""
        deadline = time.monotonic() + LOG_TIMEOUT
        while True:
            lines = self.process.lines[mark:]
            missing = [
                item for item in expected if not any(pattern(item).search(line) for line in lines)
            ]
            if not missing:
                return
            remaining = deadline - time.monotonic()
            tail = "\n".join(lines[-80:])
            assert remaining > 0, f"{where}: no log line like {missing[0]!r} after:\n{tail}"
            # Block until the stack writes another line (or the time is up).
            self.process.wait_for_line("", remaining)

    def run(self, step: Step, where: str) -> None:
        mark = len(self.process.lines)
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", step.script],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{where}: exit {result.returncode}\n{output}"
        for item in step.output:
            assert pattern(item).search(output), f"{where}: no output like {item!r} in:\n{output}"
        if step.log:
            self.wait_for_log(step.log, mark, where)


def tour_config(directory: Path) -> tuple[Path, dict[str, str]]:
    """``docs/tour/config.toml`` with free ports and data under ``directory``, and the
    variables the docs' setup block would set."""
    base = consecutive_free_ports(4)  # backend 8001-8002, lab 9101-9102
    ports = {
        "8443": free_port(),
        "8080": free_port(),
        "8444": free_port(),
        "8001": base,
        "8002": base + 1,
        "9101": base + 2,
        "9102": base + 3,
    }
    text = TOUR_CONFIG.read_text()
    for default, port in ports.items():
        text = re.sub(rf"\b{default}\b", str(port), text)
    text = text.replace('"../../certs"', f'"{directory / "certs"}"')
    text = text.replace('"../../var/', f'"{directory / "var"}/')
    text = text.replace('cwd = "../.."', f'cwd = "{REPO}"')
    config = directory / "config.toml"
    config.write_text(text)
    env = {
        **os.environ,
        "CONFIG": str(config),
        "GW": f"https://localhost:{ports['8443']}",
        "CA": str(directory / "certs" / "ca.pem"),
        "LAB": f"http://127.0.0.1:{ports['9101']}",
        "BACKEND_JWT_SECRET": "tour-test-" + "t" * 32,
    }
    return config, env


@pytest.fixture(scope="module")
def tour_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TourStack]:
    """The tour's ``make run`` block, started verbatim with the test's variables."""
    directory = tmp_path_factory.mktemp("tour")
    _, env = tour_config(directory)
    (background,) = [s for s in parse(TOUR) if s.kind == "background"]
    process = ManagedProcess(["bash", "-c", background.script], env=env, start_new_session=True)
    stack = TourStack(process, env)
    try:
        stack.wait_for_log(
            background.log or ["all services up"], 0, f"{TOUR.name}:{background.line}"
        )
        yield stack
    finally:
        # Ctrl-C in the make run terminal: the whole session gets SIGINT.
        with _suppress_missing():
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            with _suppress_missing():
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, ProcessLookupError)


def test_the_tour(tour_stack: TourStack) -> None:
    for step in parse(TOUR):
        if step.kind == "sh":
            tour_stack.run(step, f"{TOUR.name}:{step.line}")


@pytest.mark.parametrize("lab", LABS, ids=[lab.stem for lab in LABS])
def test_a_lab(tour_stack: TourStack, lab: Path) -> None:
    for step in parse(lab):
        tour_stack.run(step, f"{lab.relative_to(REPO)}:{step.line}")
