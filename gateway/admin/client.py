"""``pygateway reload``: ask the running gateway, through its admin API, to reload its config.

It reads the same config file as the gateway to find ``[admin]`` (where to connect) and
``[tls]`` (which root to trust), posts ``/api/reload`` and prints what the gateway answered:
the errors of an invalid file (exit 1; the old config keeps serving) or that it was applied.
With ``[admin] htpasswd`` it needs a user (``--user``) and that user's password (the
``PYGATEWAY_ADMIN_PASSWORD`` environment variable, or ``--password-stdin``).
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from typing import Any

import httpx

from gateway.cli import Command, add_config_argument, load_or_report
from gateway.config import Settings, is_loopback_name

PASSWORD_ENV = "PYGATEWAY_ADMIN_PASSWORD"


def admin_request_target(settings: Settings) -> tuple[str, dict[str, Any], ssl.SSLContext]:
    """The URL of ``/api/reload``, httpx extensions (the TLS name) and the trust to use."""
    assert settings.admin is not None
    admin = settings.admin
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(admin.host, admin.host)
    authority = f"[{host}]" if ":" in host else host
    url = f"https://{authority}:{admin.port}/api/reload"
    extensions: dict[str, Any] = {}
    if settings.tls.cert_file is None:
        # The local CA's leaf covers 127.0.0.1 and ::1 (and the hostnames).
        context = ssl.create_default_context(cafile=str(settings.tls.dir / "ca.pem"))
    else:
        # A bring-your-own certificate names the public hostnames: check it against one.
        context = ssl.create_default_context()
        name = next((h for h in settings.gateway.hostnames if not h.startswith("*.")), None)
        if name is not None and not is_loopback_name(name):
            extensions["sni_hostname"] = name
    return url, extensions, context


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--user", help="an [admin] htpasswd user (when the file is set)")
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help=f"read the password from stdin (else ${PASSWORD_ENV})",
    )


def cmd_reload(args: argparse.Namespace) -> int:
    settings = load_or_report(args.config)
    if settings is None:
        print("not sent: the running gateway would refuse this config too", file=sys.stderr)
        return 1
    if settings.admin is None or not settings.admin.enabled:
        print(
            f"{args.config}: [admin] is not enabled, so there is no admin API to ask; "
            "send SIGHUP to the gateway's main process instead",
            file=sys.stderr,
        )
        return 1
    auth = None
    if settings.admin.htpasswd is not None:
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
        password = password if password is not None else os.environ.get(PASSWORD_ENV)
        if not args.user or password is None:
            print(
                f"[admin] htpasswd is set: give --user and the password "
                f"(${PASSWORD_ENV} or --password-stdin)",
                file=sys.stderr,
            )
            return 1
        auth = httpx.BasicAuth(args.user, password)
    url, extensions, context = admin_request_target(settings)
    try:
        with httpx.Client(verify=context, auth=auth, trust_env=False, timeout=60.0) as client:
            response = client.post(url, extensions=extensions)
    except httpx.HTTPError as exc:
        print(
            f"cannot reach the admin API at {url}: {exc} (is the gateway running?)", file=sys.stderr
        )
        return 1
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code == 200:
        for warning in body.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{settings.path}: reloaded")
        return 0
    if response.status_code == 422:
        for line in body.get("errors", []):
            print(line, file=sys.stderr)
        print(f"{body.get('message', 'invalid configuration')}", file=sys.stderr)
        return 1
    message = body.get("message", response.text[:200])
    print(f"the admin API answered {response.status_code}: {message}", file=sys.stderr)
    return 1


RELOAD_COMMAND = Command(
    "ask the running gateway (by its admin API) to reload its config; print the errors "
    "and exit 1 if the new config is invalid",
    _arguments,
    cmd_reload,
)
