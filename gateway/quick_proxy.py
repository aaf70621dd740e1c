"""``pygateway proxy --from HOST[:PORT] --to URL``: HTTPS in front of an app with no config file.

Like ``caddy reverse-proxy``: the settings are built from the arguments and validated by the
same loader as a config file (so a bad ``--to`` gets the same message a bad ``servers`` entry
would).  The local CA lives in one per-user data directory, so one trusted root
(``pygateway trust``) serves every project.  Active health checks accept any answer below 500
from ``/``: an app need not have a health endpoint, but a dead one leaves the rotation.  The
cache is off: a development server's responses change under the developer's feet.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gateway.cli import Command, load_settings_data, serve

DEFAULT_HTTPS_PORT = 8443
DEFAULT_HTTP_PORT = 8080


def data_dir() -> Path:
    """The per-user directory for the local CA (XDG_DATA_HOME, as mkcert and Caddy do)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pygateway"


def split_from(value: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (``[::1]:8443`` for IPv6) into a host name and a port."""
    host, port = value, DEFAULT_HTTPS_PORT
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise argparse.ArgumentTypeError(
                f"--from {value!r}: missing ']' after the IPv6 address"
            )
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            port = _port(value, rest.removeprefix(":"))
    elif value.count(":") == 1:
        host, raw_port = value.split(":")
        port = _port(value, raw_port)
    if not host:
        raise argparse.ArgumentTypeError(f"--from {value!r}: give a host name, e.g. localhost:8443")
    return host, port


def _port(value: str, raw: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise argparse.ArgumentTypeError(f"--from {value!r}: the port must be from 1 to 65535")
    return int(raw)


def proxy_config(
    host: str, https_port: int, http_port: int, upstreams: list[str], bind: str
) -> dict[str, Any]:
    """The config.toml tables equivalent to the command line."""
    return {
        "gateway": {
            "host": bind,
            "https_port": https_port,
            "http_port": http_port,
            "hostnames": [host],
        },
        "tls": {"dir": str(data_dir())},
        "upstreams": {
            "app": {
                "servers": upstreams,
                "health_path": "/",
                "health_status": list(range(200, 500)),
            }
        },
        "routes": [{"path_prefix": "/", "upstream": "app", "cache": False}],
        "cache": {"enabled": False},
    }


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="from_",
        metavar="HOST[:PORT]",
        default=f"localhost:{DEFAULT_HTTPS_PORT}",
        help="the HTTPS address to serve (default: %(default)s)",
    )
    parser.add_argument(
        "--to",
        action="append",
        required=True,
        metavar="URL",
        help="upstream server URL, e.g. http://127.0.0.1:3000 (repeat to load-balance)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=DEFAULT_HTTP_PORT,
        help="plain-HTTP port that redirects to HTTPS (default: %(default)s)",
    )
    parser.add_argument(
        "--bind", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )


def _run(args: argparse.Namespace) -> int:
    try:
        host, port = split_from(args.from_)
    except argparse.ArgumentTypeError as exc:
        print(f"pygateway proxy: {exc}", file=sys.stderr)
        return 2
    data = proxy_config(host, port, args.http_port, args.to, args.bind)
    settings = load_settings_data(data, data_dir() / "proxy (command line)")
    if settings is None:
        return 1
    ca = settings.tls.dir / "ca.pem"
    print(
        f"pygateway proxy: https://{host}:{port}/ -> {', '.join(args.to)}\n"
        f"  local CA: {ca}\n"
        f"  trust it once with `pygateway trust` (run where there is no config.toml), "
        f"or: curl --cacert {ca} https://{host}:{port}/",
        file=sys.stderr,
    )
    return serve(settings)


PROXY_COMMAND = Command(
    "HTTPS for HOST in front of the given upstream URL(s), no config file needed",
    _arguments,
    _run,
)
