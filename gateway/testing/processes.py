"""The gateway process, the watchdog beside it, and stopping a whole process group."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

READY_LINE = "gateway ready"
# Above the gateway's default graceful_timeout (10 s): a stop is graceful whenever it can be.
STOP_TIMEOUT = 15.0


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of group ``pgid``, from /proc (empty where there is
    no /proc: nothing to wait for there)."""
    members = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                stat = Path("/proc", name, "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            # After the command name, which may itself hold ")": state, ppid, pgrp, ...
            state, _, pgrp = stat.rpartition(")")[2].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                members.append(int(name))
    return members


def wait_exited(pids: list[int], timeout: float) -> None:
    """Wait (bounded) until each of ``pids`` has exited; they need not be our children."""
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            continue  # already gone, or no pidfds on this system
        try:
            select.select([fd], [], [], timeout)
        finally:
            os.close(fd)


# Run beside each gateway, in its process group, holding the read end of a pipe whose write end
# only the test process has.  When that process dies without stopping its gateways (SIGKILL, a
# CI timeout, os._exit) the pipe reports EOF and the watchdog stops the group: SIGTERM for a
# graceful stop, then SIGKILL.  It ignores SIGTERM itself, so it outlives the gateway's stop and
# finally takes itself down with the group's SIGKILL.
WATCHDOG = f"""
import os, select, signal, sys, time
pgid = int(sys.argv[1])
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.stdin.buffer.read()
try:
    os.killpg(pgid, signal.SIGTERM)
    if hasattr(os, "pidfd_open"):
        select.select([os.pidfd_open(pgid)], [], [], {STOP_TIMEOUT})
    else:
        deadline = time.monotonic() + {STOP_TIMEOUT}
        while time.monotonic() < deadline:
            os.kill(pgid, 0)
            time.sleep(0.1)
except OSError:
    pass
os.killpg(pgid, signal.SIGKILL)
"""


class GatewayProcess:
    """``python -m gateway run --config FILE`` in its own process group; its output (stdout
    and stderr merged) is kept in memory and in ``log_file``."""

    def __init__(self, config_file: Path, log_file: Path) -> None:
        self.log_file = log_file
        self.lines: list[str] = []
        self.ready = False
        self.ended = False
        self._settled = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=config_file.parent,
            process_group=0,  # its own group: one signal reaches its workers too
            text=True,
            errors="replace",
        )
        try:
            # Joins the gateway's group, so the group's stop signals end it too.
            self.watchdog = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", WATCHDOG, str(self.proc.pid)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                process_group=self.proc.pid,
            )
        except BaseException:  # no watchdog, no gateway: nothing may run unwatched
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            raise
        self._reader = threading.Thread(
            target=self._read, name=f"pygateway-log:{self.proc.pid}", daemon=True
        )
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout, self.log_file.open("a", encoding="utf-8") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self.lines.append(line.rstrip("\n"))
                if not self.ready and READY_LINE in line:
                    self.ready = True
                    self._settled.set()
        self.ended = True  # end of output: the process is exiting
        self._settled.set()

    def wait_ready(self, timeout: float) -> bool:
        self._settled.wait(timeout)
        return self.ready

    def output(self) -> str:
        return "\n".join(self.lines)

    def exit_code(self) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.proc.wait(STOP_TIMEOUT)
        return None

    def stop(self) -> int | None:
        """SIGTERM to the group, a bounded wait, then SIGKILL; nothing of it runs afterwards."""
        pgid = self.proc.pid
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        # Whatever is left of the group (a worker that outlived its parent) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        if code is None:
            self.proc.wait()
        wait_exited(group_members(pgid), STOP_TIMEOUT)  # SIGKILL is sent, not yet done
        self.watchdog.wait()  # killed with the group above
        if self.watchdog.stdin is not None:
            self.watchdog.stdin.close()
        self._reader.join(STOP_TIMEOUT)
        return code
