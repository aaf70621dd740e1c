"""The admin listener: a uvicorn server for ``gateway.admin.api`` on ``[admin] host:port``.

It runs in the process that can see the whole gateway: the gateway itself when it is one
process (``LocalSource``), the parent of the workers otherwise (``control.WorkerPool``, which
asks every worker).  HTTPS with the gateway's certificate, in a context of its own that
offers HTTP/1.1 only (the proxy's offers h2, which uvicorn cannot speak).  That context follows
the certificate files as the proxy's does: a renewed local leaf or a replaced ``[tls]
cert_file`` reaches new admin connections too, in whichever process runs the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from gateway.admin.state import describe_process, merge_views, purge_cache
from gateway.config import AdminSettings, Settings
from gateway.listeners import ListenError, bind
from gateway.runtime.reload import ReloadError
from gateway.tls.certs import CertificatePaths, ensure_certificates
from gateway.tls.context import load_certificate, server_ssl_context
from gateway.tls.service import certificate_stamp, follow_certificate_files

if TYPE_CHECKING:
    from gateway.server import Gateway

log = logging.getLogger("gateway.admin")


def bind_admin(admin: AdminSettings) -> socket.socket:
    """The admin listening socket; ListenError naming ``[admin] port`` if it is taken."""
    try:
        return bind(admin.host, admin.port, "admin_port")
    except ListenError as exc:
        raise ListenError(str(exc).replace("[gateway] admin_port", "[admin] port")) from None


def check_admin_port(settings: Settings) -> None:
    """At start-up: a busy admin port is one line and exit 1, like the proxy's ports."""
    assert settings.admin is not None
    bind_admin(settings.admin).close()


# The context, its files and their certificate_stamp from before they were loaded.
AdminTLS = tuple[ssl.SSLContext, CertificatePaths, tuple[float, ...]]


def admin_ssl_context(settings: Settings) -> AdminTLS:
    paths = ensure_certificates(settings.tls, settings.gateway.hostnames)
    stamp = certificate_stamp(paths)
    return server_ssl_context(paths.cert_file, paths.key_file, http2=False), paths, stamp


class LocalSource:
    """The admin API's view of a one-process gateway: that process itself."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def settings(self) -> Settings:
        return self.gateway.settings

    async def view(self) -> dict[str, Any]:
        return merge_views([describe_process(self.gateway)], self.gateway.settings)

    async def purge(self, prefix: str) -> int:
        return await purge_cache(self.gateway, prefix)

    async def reload(self) -> list[str]:
        return await self.gateway.reloader.reload_file()


class AdminServer:
    """Start, stop and move (on a reload) the admin listener."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.settings: AdminSettings | None = None
        self.follower: asyncio.Task[None] | None = None

    def prepare(self, settings: Settings) -> tuple[socket.socket | None, AdminTLS | None]:
        """For a reload: the new listening socket (None: disabled), bound now so a busy
        port fails the reload before anything changed."""
        admin = settings.admin
        if admin is None or not admin.enabled:
            return None, None
        try:
            return bind_admin(admin), admin_ssl_context(settings)
        except ListenError as exc:
            from gateway.runtime.reload import ReloadError

            raise ReloadError([str(exc)]) from None

    def start(
        self,
        settings: Settings,
        binding: tuple[socket.socket | None, AdminTLS | None] | None = None,
    ) -> None:
        admin = settings.admin
        if admin is None or not admin.enabled:
            return
        sock, tls = binding if binding is not None else (None, None)
        if sock is None:
            sock = bind_admin(admin)
        chosen, paths, stamp = tls if tls is not None else admin_ssl_context(settings)
        from gateway.admin.api import build_app

        app = build_app(self.source, admin.htpasswd)

        def factory(config: uvicorn.Config, default: object) -> ssl.SSLContext:
            return chosen

        config = uvicorn.Config(
            app,
            host=admin.host,
            port=admin.port,
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            ssl_context_factory=factory,
            timeout_graceful_shutdown=2,
        )
        server = _AdminUvicorn(config)
        self.server = server
        self.settings = admin
        self.task = asyncio.create_task(server.serve([sock]), name="admin listener")
        self._stop_following()

        def load(cert_file: Path, key_file: Path) -> None:
            load_certificate(chosen, cert_file, key_file)

        self.follower = asyncio.create_task(
            follow_certificate_files(load, paths, stamp, "the admin listener"),
            name="admin certificate",
        )
        host = f"[{admin.host}]" if ":" in admin.host else admin.host
        log.info("admin API and dashboard: https://%s:%d/", host, admin.port)

    async def restart(
        self, settings: Settings, binding: tuple[socket.socket | None, AdminTLS | None]
    ) -> None:
        """After a reload changed ``[admin]``: the new listener up, then the old one gone
        (it finishes the request that asked for the reload)."""
        old, old_task = self.server, self.task
        self.server = self.task = None
        self._stop_following()
        if binding[0] is not None:
            self.start(settings, binding)
        if old is not None and old_task is not None:
            old.should_exit = True
            with contextlib.suppress(Exception):
                await old_task

    def _stop_following(self) -> None:
        if self.follower is not None:
            self.follower.cancel()
            self.follower = None

    async def stop(self) -> None:
        self._stop_following()
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await self.task
        self.server = self.task = None


class _AdminUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield  # the gateway (or the supervisor) owns the signals


__all__ = ["AdminServer", "LocalSource", "ReloadError", "check_admin_port"]
