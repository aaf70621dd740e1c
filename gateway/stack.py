"""``make run``: the whole stack from one config, under one supervisor, with no Docker.

Three kinds of groups (``gateway/runtime/supervisor.py``), started in this order and stopped in
the reverse one (the gateway first, so it stops taking requests while the others can still
answer the ones in flight):

* ``backend``: ``run_backend.py`` (itself a supervisor of ``[backend].workers``), healthy once
  its first worker answers ``GET /health``; SIGHUP is passed on (it rolls its workers);
* every ``[services.NAME]``, once the backend is healthy: ``workers`` processes of ``command``,
  ``{port}`` replaced by ``base_port + i`` (also given as ``PORT``), in ``cwd``, with ``env_file``
  then ``env`` over our environment, healthy once ``health_path`` answers 2xx; SIGHUP restarts
  them one at a time;
* ``gateway``: ``run_gateway.py``, started once everything above is healthy; up once it
  prints "gateway ready".

A leading ``python``/``python3`` in a command means the interpreter running the stack (the
project's virtualenv).  Each process's output is shown line by line behind its name, like
``docker compose up``; the values of ``env_file`` are never printed.  A service that does not
become healthy within ``start_timeout`` is reported with the tail of its output and the stack
stops (exit 1).  Ctrl-C (or SIGTERM) stops everything; children run in sessions of their own and
die with the stack even if it is killed, so nothing is left behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from gateway.config import ConfigError, ServiceSettings, Settings, load_settings
from gateway.runtime.children import OutputPrefixer, start_command
from gateway.runtime.envfile import EnvFileError, read_env_file
from gateway.runtime.supervisor import KILL_MARGIN, Group, Launched, Supervisor

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0  # backend and gateway: migrations and certificates may take a while
PYTHON_NAMES = ("python", "python3")

log = logging.getLogger("stack")


class PrefixedHandler(logging.Handler):
    """The stack's own lines go through the same prefixer as its children's."""

    def __init__(self, output: OutputPrefixer) -> None:
        super().__init__()
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        for line in self.format(record).splitlines():
            self.output.write("stack", line)


def service_argv(service: ServiceSettings, port: int) -> list[str]:
    argv = [arg.replace("{port}", str(port)) for arg in service.command]
    if argv[0] in PYTHON_NAMES:
        argv[0] = sys.executable
    return argv


def service_env(
    service: ServiceSettings, port: int, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Our environment, then the env_file, then ``env`` (as docker compose orders them)."""
    env = dict(os.environ if base is None else base)
    if service.env_file is not None:
        try:
            env.update(read_env_file(service.env_file))
        except EnvFileError as exc:  # changed since the config was checked
            raise OSError(str(exc)) from None
    env.update(service.env)
    env["PORT"] = str(port)
    return env


def _health_period(settings: Settings, upstream: str) -> float:
    """How long the gateway may take to see a server come back UP (one active check)."""
    pool = settings.upstreams.get(upstream)
    return 0.0 if pool is None else pool.health_interval + pool.health_timeout


def build_groups(
    settings: Settings, config: Path, output: OutputPrefixer, trace: bool = False
) -> list[Group]:
    python = sys.executable
    gateway_argv = [python, str(ROOT / "run_gateway.py"), "--config", str(config)]
    if trace:
        gateway_argv.append("--trace")
    backend = settings.backend
    groups = [
        Group(
            name="backend",
            label="backend",
            launch=lambda i: start_command(
                [python, str(ROOT / "run_backend.py"), "--config", str(config)],
                name="backend",
                output=output,
                env=os.environ,
                cwd=ROOT,
            ),
            ports=[backend.base_port],
            host=backend.host,
            health_path="/health",
            start_timeout=START_TIMEOUT,
            grace=backend.graceful_timeout + KILL_MARGIN,  # it stops its own workers first
            on_hup="forward",
            numbered=False,
        )
    ]
    for position, service in enumerate(settings.services.values()):
        names = [service.name] * service.workers
        if service.workers > 1:
            names = [f"{service.name}-{i}" for i in range(service.workers)]
        ports = list(service.worker_ports())

        def launch(
            index: int, service: ServiceSettings = service, names: list[str] = names
        ) -> Launched:
            port = service.base_port + index
            return start_command(
                service_argv(service, port),
                name=names[index],
                output=output,
                env=service_env(service, port),
                cwd=service.cwd,
            )

        groups.append(
            Group(
                name=service.name,
                label=service.name,
                launch=launch,
                ports=ports,
                health_path=service.health_path,
                start_timeout=service.start_timeout,
                grace=service.graceful_timeout,
                on_hup="roll",
                # After the backend, whose database (sessions, roles) services may read; the
                # services themselves start together.
                after_previous=position == 0,
                numbered=service.workers > 1,
                settle=_health_period(settings, service.name),
            )
        )
    groups.append(
        Group(
            name="gateway",
            label="gateway",
            launch=lambda i: start_command(
                gateway_argv,
                name="gateway",
                output=output,
                env=os.environ,
                cwd=ROOT,
                ready_line="gateway ready",
            ),
            ports=[None],
            start_timeout=START_TIMEOUT,
            grace=settings.gateway.graceful_timeout,
            # SIGHUP to the stack also reloads the gateway's configuration (as `pygateway
            # reload` does), while the services' workers restart one at a time.
            on_hup="forward",
            after_previous=True,
            numbered=False,
        )
    )
    for group in groups:
        output.reserve([group.label] + [f"{group.label}-{i}" for i in range(len(group.ports))])
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.stack", description=__doc__)
    parser.add_argument("--config", default="config.toml")
    parser.add_argument("--trace", action="store_true", help="the gateway's trace mode")
    args = parser.parse_args(argv)
    config = Path(args.config).resolve()
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    output = OutputPrefixer()
    handler = PrefixedHandler(output)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    groups = build_groups(settings, config, output, trace=args.trace)
    supervisor = Supervisor(groups, log)
    supervisor.on_all_up = lambda: log.info("all services up; Ctrl-C stops everything")
    return supervisor.run()


if __name__ == "__main__":
    raise SystemExit(main())
