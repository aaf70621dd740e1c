"""The command line: ``pygateway SUBCOMMAND`` (also ``python -m gateway``) and ``run_gateway.py``.

Library code raises typed errors (ConfigError, CertificateError, ListenError); only this module
turns them into messages and exit codes.  Each subcommand is one entry of ``COMMANDS``: a
function that adds its arguments and a function that runs it and returns the exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, Settings, load_settings, parse_settings


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # uvicorn's start-up chatter duplicates our own "gateway ready" line.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health check otherwise


def load_or_report(path: str) -> Settings | None:
    """The settings, or None after printing every config error (``nginx -t`` style)."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"{path}: configuration has {len(exc.errors)} error(s)", file=sys.stderr)
        return None


def load_settings_data(data: dict[str, Any], path: Path) -> Settings | None:
    """Settings from config tables given as a dict (``pygateway proxy``, the pytest plugin)."""
    try:
        return parse_settings(data, path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return None


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="config.toml", help="config file (default: %(default)s)"
    )


# --- run / check ------------------------------------------------------------------------------


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    add_trace_argument(parser)


def add_trace_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace",
        action="store_true",
        help="log one block per request following it through the gateway's stages "
        "(as [gateway] trace = true)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_or_report(args.config)
    if settings is None:
        return 1
    if getattr(args, "trace", False):
        from gateway import tracing

        tracing.FORCED = True  # also for the configs reloads read
        settings = tracing.forced(settings)
    return serve(settings)


def serve(settings: Settings) -> int:
    """Run the gateway until a signal stops it; start-up failures become one line, exit 1."""
    from gateway.listeners import ListenError
    from gateway.server import run
    from gateway.tls.certs import CertificateError

    configure_logging()
    try:
        run(settings)
    except (CertificateError, ListenError) as exc:
        logging.getLogger("gateway").error("%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def cmd_check(args: argparse.Namespace) -> int:
    settings = load_or_report(args.config)
    if settings is None:
        return 1
    from gateway.checks import check_environment

    errors = check_environment(settings)
    if errors:
        for line in errors:
            print(line, file=sys.stderr)
        print(f"{args.config}: {len(errors)} error(s)", file=sys.stderr)
        return 1
    print(settings.summary())
    return 0


@dataclass(frozen=True, slots=True)
class Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {
    "run": Command(
        "start the gateway listeners (creates missing certificates)", _run_arguments, cmd_run
    ),
    "check": Command(
        "validate the config, its certificate files and listen ports; print every error",
        _check_arguments,
        cmd_check,
    ),
}


def _register_optional_commands() -> None:
    # Subcommands that live with their own concern register themselves here.
    from gateway.quick_proxy import PROXY_COMMAND
    from gateway.tls.trust import TRUST_COMMAND, UNTRUST_COMMAND

    COMMANDS.setdefault("proxy", PROXY_COMMAND)
    from gateway.explain import EXPLAIN_COMMAND

    COMMANDS.setdefault("explain", EXPLAIN_COMMAND)
    COMMANDS.update(trust=TRUST_COMMAND, untrust=UNTRUST_COMMAND)
    from gateway.admin.client import RELOAD_COMMAND

    COMMANDS.setdefault("reload", RELOAD_COMMAND)


def build_parser() -> argparse.ArgumentParser:
    _register_optional_commands()
    parser = argparse.ArgumentParser(
        prog="pygateway",
        description="A pure-Python HTTPS gateway: TLS termination, routing, load balancing, "
        "caching, WebSockets and static files.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.arguments(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    """``pygateway`` / ``python -m gateway``."""
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command].run(args)


def run_gateway_main(argv: list[str] | None = None) -> int:
    """``run_gateway.py [--config PATH] [--check]``: the original entry point, kept as it was."""
    parser = argparse.ArgumentParser(
        prog="run_gateway.py",
        description="HTTPS gateway: TLS termination, HTTP->HTTPS redirect, load balancing.",
    )
    add_config_argument(parser)
    parser.add_argument(
        "--check", action="store_true", help="validate the config, print every error, and exit"
    )
    add_trace_argument(parser)
    args = parser.parse_args(argv)
    return cmd_check(args) if args.check else cmd_run(args)
