"""The app under test served by uvicorn on a thread of the test process."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable

import uvicorn

from gateway.asgi import Receive, Scope, Send
from gateway.testing.errors import GatewayStartError
from gateway.testing.tables import HEALTH_PATH

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# The app's own graceful stop: the gateway in front is already gone when it begins.
APP_STOP_TIMEOUT = 5


def answering_health_checks(app: ASGIApp) -> ASGIApp:
    """``app``, except that ``HEALTH_PATH`` answers 204 without reaching it."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == HEALTH_PATH:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)

    return wrapped


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that says when its start-up is over (serving, or failed)."""

    def __init__(self, config: uvicorn.Config, settled: threading.Event) -> None:
        super().__init__(config)
        self._settled = settled

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._settled.set()


class AppServer:
    """An ASGI app served by uvicorn on a thread, on a loopback socket bound beforehand."""

    def __init__(self, app: ASGIApp) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            answering_health_checks(app),
            log_config=None,  # leave the test process's logging as the user set it up
            access_log=False,
            timeout_graceful_shutdown=APP_STOP_TIMEOUT,
        )
        self._settled = threading.Event()
        self._server = _ThreadServer(config, self._settled)
        self._error: BaseException | None = None
        # A daemon: an app whose start-up hangs must not keep the test process alive.
        self._thread = threading.Thread(
            target=self._run, name=f"pygateway-app:{self.port}", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        try:
            # asyncio.run, not Server.run: older uvicorn versions set a process-wide event loop
            # policy there, which would change the loop of the user's own async tests.
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # uvicorn calls sys.exit() when the app's startup fails
            self._error = exc
        finally:
            self._settled.set()

    def start(self, timeout: float) -> None:
        self._thread.start()
        self._settled.wait(timeout)
        if not self._server.started:
            self.stop()
            why = f" ({self._error!r})" if self._error is not None else ""
            raise GatewayStartError(
                f"the ASGI app did not start within {timeout:g}s{why}: its lifespan startup "
                "failed or hangs (uvicorn's error is in the captured log)"
            )

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(APP_STOP_TIMEOUT + 5)
        self._sock.close()
