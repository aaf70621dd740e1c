"""The socket plumbing of the raw-socket test origins (``raw_upstream``, ``scripted_upstream``):
a listener on a free 127.0.0.1 port, a thread accepting connections and a thread serving each,
and a ``with`` block that ends them (the open connections too, so no serving thread is left
blocked in a read)."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self


class ThreadedOrigin:
    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._closed = False
        self.connections = 0  # accepted so far (the gateway's health checks included)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        threading.Thread(target=self._accept, name=type(self).__name__, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._socks.append(conn)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        """Serve connection ``number`` (1, 2, ...) until it ends; close it when done."""
        raise NotImplementedError
