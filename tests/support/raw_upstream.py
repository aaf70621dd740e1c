"""A raw-socket HTTP/1.1 origin that records every request byte for byte and answers as a
test says, per request: any bytes (two responses, a 1 MiB head, a 204 with a body), or None
to close the connection without a word.

    with RawUpstream(answer) as origin:     # answer(request) -> bytes | None
        ... origin.url is the pool's server; origin.requests what reached it, in order;
        origin.connections how many connections the gateway opened (health checks included),
        origin.request_connections which of them carried a request

It reads request bodies framed by Content-Length or chunked (trailers kept in ``raw``), so a
test can check exactly what the gateway forwarded.  It runs in threads of the test process.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from support.threaded_origin import ThreadedOrigin


@dataclass
class SeenRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]  # names lowercased, in wire order
    body: bytes
    raw: bytes  # the whole request as received (head, framing, body, trailers)
    connection: int  # which connection (1-based, in accept order) carried it
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


Answer = Callable[[SeenRequest], bytes | None]
# A target containing this is answered as soon as its head is read, its body left unread.
HEAD_ONLY = "head-only"


def ok(body: bytes = b"ok", *headers: tuple[str, str]) -> bytes:
    lines = ["HTTP/1.1 200 OK", *(f"{n}: {v}" for n, v in headers), f"content-length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def default_answer(request: SeenRequest) -> bytes | None:
    return ok(b"ok")


class RawUpstream(ThreadedOrigin):
    def __init__(self, answer: Answer = default_answer) -> None:
        super().__init__()
        self.answer = answer
        self._requests: list[SeenRequest] = []

    @property
    def requests(self) -> list[SeenRequest]:
        """Requests that reached this origin (health checks left out)."""
        with self._lock:
            return [r for r in self._requests if r.target != "/health"]

    @property
    def request_connections(self) -> set[int]:
        """The connections that carried a request (the gateway's health checks left out)."""
        return {r.connection for r in self.requests}

    def _serve(self, conn: socket.socket, number: int) -> None:
        reader = _Reader(conn)
        with conn:
            while True:
                request = reader.request(number)
                if request is None:
                    return
                if request.target == "/health":
                    answer: bytes | None = ok(b"healthy")
                else:
                    with self._lock:
                        self._requests.append(request)
                    answer = self.answer(request)
                if answer is None:
                    return
                try:
                    conn.sendall(answer)
                except OSError:
                    return


class _Reader:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""

    def _fill(self) -> bool:
        try:
            chunk = self.conn.recv(65536)
        except OSError:
            return False
        self.buffer += chunk
        return bool(chunk)

    def _until(self, marker: bytes) -> bytes | None:
        while marker not in self.buffer:
            if not self._fill():
                return None
        part, _, self.buffer = self.buffer.partition(marker)
        return part + marker

    def _exactly(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self._fill():
                return None
        part, self.buffer = self.buffer[:size], self.buffer[size:]
        return part

    def request(self, number: int) -> SeenRequest | None:
        head = self._until(b"\r\n\r\n")
        if head is None:
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        raw, body = head, b""
        names = {name: value for name, value in headers}
        if HEAD_ONLY in target:
            pass  # answered (or dropped) before its body is read: an impatient server
        elif names.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = self._until(b"\r\n")
                if size_line is None:
                    return None
                raw += size_line
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while True:  # trailer section, up to the empty line
                        line = self._until(b"\r\n")
                        if line is None:
                            return None
                        raw += line
                        if line == b"\r\n":
                            break
                    break
                data = self._exactly(size + 2)
                if data is None:
                    return None
                raw += data
                body += data[:-2]
        elif "content-length" in names:
            data = self._exactly(int(names["content-length"]))
            if data is None:
                return None
            raw += data
            body = data
        return SeenRequest(method, target, headers, body, raw, number)
