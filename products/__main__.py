"""``python -m products --port PORT``: serve the products service with uvicorn.

Settings come from the environment (a ``[services.products]`` ``env``/``env_file``), as the
original service's ``.env`` did: ``PRODUCTS_DATABASE`` is a SQLite file (relative to the
working directory; default ``var/products.db``) or a ``postgresql://`` URL.  The backend's
settings (where its signing key and database are) come from ``--config``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from backend.worker import WorkerServer
from gateway.config import ConfigError, is_database_url, load_settings

from .app import create_app

DATABASE_ENV = "PRODUCTS_DATABASE"
DEFAULT_DATABASE = "var/products.db"


def database_target(value: str) -> Path | str:
    return value if is_database_url(value) else Path(value).resolve()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m products", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--config", type=Path, default=Path("config.toml"))
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    target = database_target(os.environ.get(DATABASE_ENV, DEFAULT_DATABASE))
    # The backend's worker server: SIGTERM stops it gracefully with exit status 0.
    server = WorkerServer(
        uvicorn.Config(
            create_app(target, settings.backend),
            host=args.host,
            port=args.port,
            lifespan="on",
            log_config=None,
            log_level="warning",
            access_log=False,  # the gateway in front writes one
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=math.ceil(settings.backend.graceful_timeout),
        )
    )
    server.run()
    if not server.started:
        return 1  # start-up failed (port taken, database unusable): uvicorn logged why
    logging.getLogger("products").info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
