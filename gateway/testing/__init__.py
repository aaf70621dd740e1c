"""A real gateway process in front of the app under test: what the ``pygateway`` fixture returns.

Theory of operation.  ``start_gateway`` writes a config file (the caller's tables merged over
defaults: loopback ports, a private CA in the gateway's own directory, the host ``localhost``)
and starts ``python -m gateway run --config FILE`` exactly as a user would.  An in-process ASGI
app is served by uvicorn on a thread of the calling process, on a socket bound here before the
thread starts, so its port is known and held from the start.

Readiness is an event, not a poll: a reader thread consumes the gateway's output and wakes the
caller on the "gateway ready" line, or when the output ends because the process exited; the
caller then raises with that output.  The gateway binds its own ports, so a port picked free here
can be taken by another process (another pytest-xdist worker) before the gateway binds it; the
gateway then exits at once with "... already in use" and the start is retried on fresh ports.

Every gateway runs in its own process group (its worker processes included) and is stopped by
SIGTERM to the group, a bounded wait, then SIGKILL: by ``stop()``, by the fixture's teardown
(which also runs when the test fails or pytest is interrupted), and by an ``atexit`` hook; a
watchdog process in the group does the same when the test process dies without any of those.

Modules: ``tables`` (the config file written), ``app_server`` (uvicorn on a thread),
``processes`` (the gateway process, its watchdog, stopping a process group) and ``running``
(``start_gateway`` and the ``RunningGateway`` it returns).
"""

from __future__ import annotations

from gateway.testing.app_server import ASGIApp
from gateway.testing.errors import GatewayStartError
from gateway.testing.running import RunningGateway, start_gateway

__all__ = ["ASGIApp", "GatewayStartError", "RunningGateway", "start_gateway"]
