"""``run_gateway.py``: start the gateway, or ``--check`` the config like ``nginx -t``.

Library code raises typed errors (ConfigError, CertificateError); only this module turns
them into messages and exit codes.
"""

from __future__ import annotations

import argparse
import logging
import sys

from gateway.certs import CertificateError
from gateway.config import ConfigError, Settings, load_settings


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # uvicorn's start-up chatter duplicates our own "gateway ready" line.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health check otherwise


def check_files(settings: Settings) -> list[str]:
    """Problems --check can find beyond the config file itself."""
    errors = []
    tls = settings.tls
    for key in ("cert_file", "key_file"):
        path = getattr(tls, key)
        if path is not None and not path.is_file():
            errors.append(f"{settings.path}: [tls] {key} = {str(path)!r}: no such file")
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_gateway.py",
        description="HTTPS gateway: TLS termination, HTTP->HTTPS redirect, load balancing.",
    )
    parser.add_argument(
        "--config", default="config.toml", help="config file (default: %(default)s)"
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the config, print every error, and exit"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"{args.config}: configuration has {len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    if args.check:
        errors = check_files(settings)
        if errors:
            for line in errors:
                print(line, file=sys.stderr)
            return 1
        print(settings.summary())
        return 0

    configure_logging()
    from gateway.server import run

    try:
        run(settings)
    except CertificateError as exc:
        logging.getLogger("gateway").error("%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
