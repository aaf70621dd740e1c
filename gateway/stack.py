"""``make run``: the whole stack from one config: the backend supervisor and the gateway.

Both run as child processes in their own process group so that one Ctrl-C (or SIGTERM)
reaches us once and we forward it to each: each child shuts down gracefully on its own
(the backend drains its workers, the gateway finishes in-flight requests).  If either child
dies, the other is stopped too; anything still alive after the grace period is killed, so
nothing is left behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from gateway.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.stack", description=__doc__)
    parser.add_argument("--config", default="config.toml")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    grace = max(settings.gateway.graceful_timeout, settings.backend.graceful_timeout) + 5

    python = sys.executable
    commands = {
        "backend": [python, str(ROOT / "run_backend.py"), "--config", args.config],
        "gateway": [python, str(ROOT / "run_gateway.py"), "--config", args.config],
    }
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for name, command in commands.items():
            # A new session: the terminal's Ctrl-C reaches only us, and we decide the order.
            children[name] = subprocess.Popen(command, start_new_session=True)
        print(
            f"stack: backend (pid {children['backend'].pid}) and gateway "
            f"(pid {children['gateway'].pid}) started; Ctrl-C stops both",
            file=sys.stderr,
        )
        exited = None
        while not stopping and exited is None:
            for name, child in children.items():
                if child.poll() is not None:
                    exited = name
            if exited is None:
                time.sleep(0.2)  # Ctrl-C is acted on within 0.2 s
        if exited is not None:
            print(
                f"stack: {exited} exited ({children[exited].returncode}); stopping the rest",
                file=sys.stderr,
            )
    finally:
        _terminate(children, grace)
    failed = any(c.returncode not in (0, -signal.SIGTERM) for c in children.values())
    return 1 if failed and not stopping else 0


def _terminate(children: dict[str, subprocess.Popen[bytes]], grace: float) -> None:
    # Gateway first: it stops taking requests while the backend can still answer in-flight ones.
    for name in ("gateway", "backend"):
        child = children.get(name)
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                print(f"stack: {name} did not stop within {grace:g}s; killing it", file=sys.stderr)
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


if __name__ == "__main__":
    raise SystemExit(main())
