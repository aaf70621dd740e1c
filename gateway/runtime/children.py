"""The two ways the supervisor starts a worker, behind its ``Child`` interface.

* ``spawn_target``: a Python function in a new interpreter (multiprocessing's ``spawn``, as
  uvicorn does): backend and gateway workers.  The child gets the write end of a pipe and sends
  one message on it once it serves; its output is the parent's.
* ``start_command``: any program (a ``[services.NAME]`` command).  It runs in a session of its
  own, so a terminal's Ctrl-C reaches only the supervisor, which then stops everything in order;
  ``PR_SET_PDEATHSIG`` makes the kernel SIGTERM it if the supervisor dies, even by SIGKILL, so
  nothing is orphaned.  Its output (stdout and stderr) is read line by line, written with a
  ``name |`` prefix like ``docker compose up`` (in colour on a terminal), and the last lines are
  kept for reports.
"""

from __future__ import annotations

import collections
import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import IO, Any

from .supervisor import TAIL_LINES, Launched

READY = "ready"
COLOURS = (36, 33, 32, 35, 34, 31)  # cyan, yellow, green, magenta, blue, red
PR_SET_PDEATHSIG = 1


class SpawnedChild:
    def __init__(self, process: BaseProcess) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def sentinel(self) -> int:
        return self.process.sentinel

    def exitcode(self) -> int | None:
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        if self.process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def reap(self) -> None:
        self.process.join()

    def tail(self) -> list[str]:
        return []


def spawn_target(
    target: Callable[..., object], args: tuple[Any, ...], name: str, *, ready: bool = True
) -> Launched:
    """Run ``target(*args, ready_writer)`` (or ``target(*args)``) in a spawned process."""
    context = multiprocessing.get_context("spawn")
    if not ready:
        process = context.Process(target=target, args=args, name=name)
        process.start()
        return Launched(SpawnedChild(process))
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(*args, writer), name=name)
    process.start()
    writer.close()  # the child holds the only write end: EOF here if it dies early
    return Launched(SpawnedChild(process), reader)


class OutputPrefixer:
    """Writes children's lines as ``name | line`` to one stream, whole lines at a time."""

    def __init__(self, stream: IO[str] | None = None, colour: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.colour = self.stream.isatty() if colour is None else colour
        self.width = 0
        self._lock = threading.Lock()
        self._colours: dict[str, int] = {}

    def reserve(self, names: Sequence[str]) -> None:
        """Align the ``|`` of every name that will be written."""
        self.width = max([self.width, *(len(n) for n in names)])

    def write(self, name: str, line: str) -> None:
        prefix = f"{name:<{self.width}} |"
        if self.colour:
            code = self._colours.setdefault(name, COLOURS[len(self._colours) % len(COLOURS)])
            prefix = f"\033[{code}m{prefix}\033[0m"
        with self._lock:
            self.stream.write(f"{prefix} {line}\n")
            self.stream.flush()


class CommandChild:
    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        name: str,
        output: OutputPrefixer,
        ready: tuple[str, Connection] | None = None,
    ) -> None:
        self.popen = popen
        self.name = name
        self._pidfd = os.pidfd_open(popen.pid)
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._reader = threading.Thread(
            target=self._read, args=(output, ready), name=f"output-{name}", daemon=True
        )
        self._reader.start()

    def _read(self, output: OutputPrefixer, ready: tuple[str, Connection] | None) -> None:
        stream = self.popen.stdout
        assert stream is not None
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self._tail.append(line)
                output.write(self.name, line)
                if ready is not None and ready[0] in line:
                    ready[1].send(READY)
                    ready[1].close()
                    ready = None
        if ready is not None:
            ready[1].close()  # EOF: it ended without ever saying it was ready

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def sentinel(self) -> int:
        return self._pidfd

    def exitcode(self) -> int | None:
        return self.popen.poll()

    def send_signal(self, sig: int) -> None:
        # The whole session: a shell script's children are part of the service too.
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def reap(self) -> None:
        self.popen.wait()
        self._reader.join(timeout=5)  # the rest of its output, unless a grandchild holds it
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def tail(self) -> list[str]:
        return list(self._tail)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor's thread that started us dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_command(
    argv: Sequence[str],
    *,
    name: str,
    output: OutputPrefixer,
    env: Mapping[str, str],
    cwd: Path,
    ready_line: str | None = None,
) -> Launched:
    """Start ``argv``; with ``ready_line``, it is ready once it prints a line containing that
    (the gateway's "gateway ready"), else once it is started."""
    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    if ready_line is None:
        return Launched(CommandChild(popen, name, output))
    reader, writer = multiprocessing.Pipe(duplex=False)
    return Launched(CommandChild(popen, name, output, (ready_line, writer)), reader)
