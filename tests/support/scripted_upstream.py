"""A raw-socket HTTP/1.1 origin whose every answer a test scripts, byte for byte.

For what an ASGI server cannot do: close the connection after reading a request without
answering (a dropped upstream connection), or send interim 1xx responses (103 Early Hints)
before the final one.  It runs in threads of the test process on a free 127.0.0.1 port.

    with ScriptedUpstream() as origin:
        origin.script("/page", ok_response, DROP)   # 1st request answered, then dropped
        ... origin.url is the pool's server; origin.count("/page") what reached it
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from support.threaded_origin import ThreadedOrigin

# A scripted step: the raw bytes to answer with, or DROP to close without answering.
DROP = None
Step = bytes | None


def response(status: int, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    """A final HTTP/1.1 response with Content-Length."""
    lines = [f"HTTP/1.1 {status} X"] + [f"{name}: {value}" for name, value in headers]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def interim(status: int, headers: list[tuple[str, str]]) -> bytes:
    """An interim 1xx response head (RFC 9110 §15.2)."""
    lines = [f"HTTP/1.1 {status} X"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ScriptedUpstream(ThreadedOrigin):
    """Answers request N on a path with that path's N-th scripted step; the last step repeats."""

    def __init__(self) -> None:
        super().__init__()
        self._scripts: dict[str, list[Step]] = {}
        self._counts: dict[str, int] = {}

    def script(self, path: str, *steps: Step) -> None:
        with self._lock:
            self._scripts[path] = list(steps)
            self._counts[path] = 0

    def count(self, path: str) -> int:
        """How many requests for ``path`` reached this origin (dropped ones included)."""
        with self._lock:
            return self._counts.get(path, 0)

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn:
            for path in _request_paths(conn):
                with self._lock:
                    steps = self._scripts.get(path)
                    index = self._counts.get(path, 0)
                    self._counts[path] = index + 1
                if not steps:
                    # The gateway's health checks (GET /health) find it up.
                    ok = path == "/health"
                    conn.sendall(response(200 if ok else 404, [], b"ok" if ok else b"?"))
                    continue
                step = steps[min(index, len(steps) - 1)]
                if step is DROP:
                    return  # close without a word: the upstream dropped the connection
                conn.sendall(step)


def request_heads(conn: socket.socket) -> Iterator[bytes]:
    """Each request head read from ``conn`` (requests without bodies), until it closes."""
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        yield head


def _request_paths(conn: socket.socket) -> Iterator[str]:
    """The path of each request head read from ``conn``."""
    for head in request_heads(conn):
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        yield parts[1].split("?", 1)[0] if len(parts) > 1 else "/"


@contextmanager
def scripted_upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as origin:
        yield origin
