"""Talking to gateway worker processes: the parent's admin API, reloads and log reopening.

Why the parent.  With ``[gateway] workers = N`` the kernel gives each new connection to any
worker, so an admin listener in the workers would answer from whichever it landed on.  The
parent process (the supervisor) is one, knows every worker, binds the listeners and starts
replacements; so it runs the admin listener and the reload, and asks the workers:

- each worker serves a *control socket*, a unix socket in a private (0700) directory the parent
  made (``worker-<i>.sock``), in a thread of its own so a busy event loop still answers;
- a request is one length-prefixed pickle (the workers are this program's own children, started
  from the same pickled settings), answered the same way: ``describe`` (its part of the admin
  answers, ``admin.state.describe_process``), ``purge``, ``reload`` (new ``Settings``, and with
  changed ports the new listening sockets passed as descriptors, SCM_RIGHTS);
- the parent validates a new config (file, certificates, ports) before any worker sees it, so a
  reload either reaches every worker or none; a worker started meanwhile by the supervisor
  runs what ``launch`` gave it, and one that reports an older generation is sent the current
  config before it is asked anything else.

Counters of a worker that died are kept by the parent (its last answer), so the totals on
``/metrics`` only ever grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.admin.metrics import merge_metrics
from gateway.admin.state import describe_process, merge_views, purge_cache
from gateway.config import Settings
from gateway.runtime.reload import (
    ReloadError,
    load_new_settings,
    log_reloaded,
    plan_reload,
    reload_logged,
)

if TYPE_CHECKING:
    from gateway.server import Gateway

log = logging.getLogger("gateway.control")

HEADER = struct.Struct("!I")
MAX_FDS = 4
TIMEOUT = 30.0  # a reload waits for certificates and listeners; a describe is quick


def send_message(sock: socket.socket, message: Any, fds: list[int] | None = None) -> None:
    data = pickle.dumps(message)
    frame = HEADER.pack(len(data)) + data
    if fds:
        # The descriptors ride on the first bytes; sendmsg may send less than asked for, so
        # only the header goes with them and sendall takes care of the rest.
        sent = socket.send_fds(sock, [frame[: HEADER.size]], fds)
        frame = frame[sent:]
    sock.sendall(frame)


def _recv_exact(sock: socket.socket, size: int, buffer: bytearray) -> bytes:
    while len(buffer) < size:
        chunk = sock.recv(max(65536, size - len(buffer)))
        if not chunk:
            raise ConnectionError("control connection closed")
        buffer += chunk
    data, rest = bytes(buffer[:size]), buffer[size:]
    buffer[:] = rest
    return data


def recv_message(sock: socket.socket) -> tuple[Any, list[int]]:
    """One message and the descriptors that came with it (fds arrive with the first bytes)."""
    first, fds, _, _ = socket.recv_fds(sock, 65536, MAX_FDS)
    if not first:
        raise ConnectionError("control connection closed")
    buffer = bytearray(first)
    (size,) = HEADER.unpack(_recv_exact(sock, HEADER.size, buffer))
    return pickle.loads(_recv_exact(sock, size, buffer)), list(fds)


# --- in each worker -------------------------------------------------------------------------


class ControlServer:
    """A worker's control socket: requests handled on the worker's event loop."""

    def __init__(self, path: str, gateway: Gateway, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self.gateway = gateway
        self.loop = loop
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        sock.listen(16)
        self.sock = sock
        self.thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
            self.sock = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _serve(self) -> None:
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # stopped
            with conn:
                try:
                    request, fds = recv_message(conn)
                    future = asyncio.run_coroutine_threadsafe(self._handle(request, fds), self.loop)
                    send_message(conn, future.result(TIMEOUT))
                except Exception as exc:  # noqa: BLE001 - answer, never kill the thread
                    log.warning("control request failed: %s", exc)
                    with contextlib.suppress(OSError):
                        send_message(conn, {"error": [str(exc)]})

    async def _handle(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        gateway = self.gateway
        op = request["op"]
        if op == "describe":
            return {"ok": describe_process(gateway)}
        if op == "purge":
            return {"ok": await purge_cache(gateway, request["prefix"])}
        if op == "reload":
            sockets = None
            if fds:
                https, http = (socket.socket(fileno=fd) for fd in fds)
                sockets = (https, http)
            try:
                await gateway.reloader.apply(request["settings"], sockets)
            except ReloadError as exc:
                return {"error": exc.errors}
            gateway.generation = request["generation"]
            return {"ok": True}
        return {"error": [f"unknown control request {op!r}"]}


# --- in the parent --------------------------------------------------------------------------


class WorkerPool:
    """The admin API's source with workers: asks each worker's control socket, and
    coordinates reloads (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        settings: Settings,
        sockets: tuple[socket.socket, socket.socket],
        worker_pids: Callable[[], dict[int, int]],
    ) -> None:
        self.directory = directory
        self.settings = settings
        self.sockets = sockets
        self.generation = 0
        self.worker_pids = worker_pids  # index -> pid of the workers running now
        self.on_reloaded: Callable[[Settings], None] | None = None
        self.admin: Any = None
        self._lock = asyncio.Lock()
        self._gone: dict[int, dict[str, Any]] = {}  # pid -> last metrics of a dead worker
        self._last: dict[int, dict[str, Any]] = {}  # pid -> last metrics seen

    def path(self, index: int) -> str:
        return str(self.directory / f"worker-{index}.sock")

    def _ask(self, index: int, request: dict[str, Any], fds: list[int] | None = None) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(self.path(index))
            send_message(sock, request, fds)
            answer, _ = recv_message(sock)
        if "error" in answer:
            raise ReloadError(list(answer["error"]))
        return answer["ok"]

    async def ask(self, index: int, request: dict[str, Any], fds: list[int] | None = None) -> Any:
        return await asyncio.to_thread(self._ask, index, request, fds)

    async def _each(self, request: dict[str, Any]) -> list[Any]:
        """Every running worker's answer (one starting or restarting right now is left out)."""
        indexes = sorted(self.worker_pids())
        answers = await asyncio.gather(
            *(self.ask(i, request) for i in indexes), return_exceptions=True
        )
        return [a for a in answers if not isinstance(a, BaseException)]

    async def view(self) -> dict[str, Any]:
        async with self._lock:
            processes = await self._each({"op": "describe"})
            stale = [p["worker"] for p in processes if p["generation"] < self.generation]
            for index in stale:  # started before the last reload reached it
                await self._push(index)
            if stale:
                processes = await self._each({"op": "describe"})
        live = {p["pid"] for p in processes}
        for pid in list(self._last):
            if pid not in live and pid not in self.worker_pids().values():
                self._gone[pid] = self._last.pop(pid)
        for process in processes:
            self._last[process["pid"]] = process["metrics"]
        view = merge_views(processes, self.settings)
        if self._gone:
            # Counters only grow: what dead workers counted stays in the totals.
            gone = merge_metrics([*self._gone.values(), view["metrics"]])
            gone["recent"] = view["metrics"]["recent"]
            view["metrics"] = gone
        return view

    async def purge(self, prefix: str) -> int:
        return sum(await self._each({"op": "purge", "prefix": prefix}))

    async def _push(self, index: int) -> None:
        """Send the current config, with copies of the listening sockets (a worker uses
        them when its listeners changed, and closes them otherwise)."""
        request = {"op": "reload", "settings": self.settings, "generation": self.generation}
        await self.ask(index, request, [self.sockets[0].fileno(), self.sockets[1].fileno()])

    async def reload(self) -> list[str]:
        """Read the file, check what can be checked here, then apply it in every worker."""
        from gateway.listeners import ListenError, bind
        from gateway.tls.certs import CertificateError, ensure_certificates

        async with self._lock:
            new = load_new_settings(self.settings.path)
            plan = plan_reload(self.settings, new)
            try:
                await asyncio.to_thread(ensure_certificates, new.tls, new.gateway.hostnames)
            except CertificateError as exc:
                raise ReloadError([f"[tls]: {exc}"]) from None
            admin_binding = None
            if plan.admin and self.admin is not None:
                admin_binding = self.admin.prepare(new)  # a busy admin port: ReloadError
            g = new.gateway
            sockets = self.sockets
            opened: list[socket.socket] = []
            try:
                if plan.rebind_https or plan.rebind_http:
                    https = bind(g.host, g.https_port, "https_port") if plan.rebind_https else None
                    opened += [https] if https else []
                    http = bind(g.host, g.http_port, "http_port") if plan.rebind_http else None
                    opened += [http] if http else []
                    sockets = (https or sockets[0], http or sockets[1])
            except ListenError as exc:
                for sock in opened:
                    sock.close()
                if admin_binding is not None and admin_binding[0] is not None:
                    admin_binding[0].close()
                raise ReloadError([str(exc)]) from None
            previous = self.sockets
            self.settings, self.sockets = new, sockets
            self.generation += 1
            errors: list[str] = []
            for index in sorted(self.worker_pids()):
                try:
                    await self._push(index)
                except (ReloadError, OSError) as exc:
                    # A worker that cannot take it now gets it when next asked (``view``).
                    log.warning("worker %d has not applied the reload yet: %s", index, exc)
                    errors += getattr(exc, "errors", [])
            for old in previous:
                if old not in sockets:
                    old.close()
            if admin_binding is not None:
                await self.admin.restart(new, admin_binding)
            if self.on_reloaded is not None:
                self.on_reloaded(new)
            return log_reloaded(new.path, self.generation, plan) + errors


class ParentControl:
    """The parent's side, on an event loop in a thread of its own (the supervisor's loop is
    synchronous): the admin listener, and reloads asked for by SIGHUP or the admin API."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name="gateway-control", daemon=True)
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None

    def start(self) -> None:
        self.thread.start()
        self._started.wait()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from gateway.admin.server import AdminServer

        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        settings = self.pool.settings
        admin = AdminServer(self.pool)
        self.pool.admin = admin
        try:
            if settings.admin is not None and settings.admin.enabled:
                admin.start(settings)
        finally:
            self._started.set()
        await self._stop.wait()
        await admin.stop()

    def reload_soon(self) -> None:
        """SIGHUP in the parent (called on the supervisor's thread)."""
        if self.loop is not None:
            asyncio.run_coroutine_threadsafe(reload_logged(self.pool.reload), self.loop)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(10)
