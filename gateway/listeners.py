"""Binding the listening sockets, once, before any server or worker starts.

The process that starts the gateway binds both ports itself (uvicorn only ever gets ready
sockets), so a busy port is found before anything else happens and reported as one line that
names the config key, instead of uvicorn's traceback and exit code 3.
"""

from __future__ import annotations

import errno
import socket

from gateway.config import GatewaySettings


class ListenError(Exception):
    """A listen port cannot be bound; the message names the config key."""


def bind(host: str, port: int, key: str = "port") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use (is another gateway running?)"
        elif exc.errno == errno.EACCES:
            reason = "needs privileges to bind (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            reason = "not an address of this machine"
        else:
            reason = f"cannot be bound: {exc.strerror}"
        raise ListenError(f"[gateway] {key} = {port}: {address}: {reason}") from None


def bind_listeners(g: GatewaySettings) -> tuple[socket.socket, socket.socket]:
    """The (https, http) listening sockets; nothing stays bound if either fails."""
    https = bind(g.host, g.https_port, "https_port")
    try:
        http = bind(g.host, g.http_port, "http_port")
    except ListenError:
        https.close()
        raise
    return https, http


def port_problems(g: GatewaySettings) -> list[str]:
    """What ``pygateway check`` reports about the listen ports: each one that is busy now."""
    problems = []
    for key in ("https_port", "http_port"):
        port = getattr(g, key)
        if port == 0:
            continue
        try:
            bind(g.host, port, key).close()
        except ListenError as exc:
            problems.append(str(exc))
    return problems
