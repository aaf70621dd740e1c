"""Request buffering (gateway.handlers.buffering) on a fake ``receive`` and a fake upstream
connection: memory up to the bound, then a temporary file; the limit; a client that leaves."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.errors import ClientDisconnected, ContentTooLarge
from gateway.handlers.buffering import BufferedBody


def receiver(*pieces: bytes, disconnect: bool = False) -> Any:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1 or disconnect}
        for i, piece in enumerate(pieces)
    ]
    if disconnect:
        messages.append({"type": "http.disconnect"})

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    return receive


class FakeConnection:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.finished = False
        self.drains = 0

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def drain(self) -> None:
        self.drains += 1

    def finish_request(self) -> None:
        self.finished = True

    def abort(self, error: Exception) -> None:  # pragma: no cover - must not happen here
        raise AssertionError(error)


def read(*pieces: bytes, limit: int = 1000, memory: int = 100, **kw: Any) -> BufferedBody:
    return asyncio.run(BufferedBody.read(receiver(*pieces, **kw), limit, memory))


def test_a_small_body_stays_in_memory_and_is_written_at_once() -> None:
    body = read(b"ab", b"cd", b"")
    assert (body.size, body.in_memory, body.more, body.sent) == (4, True, False, False)
    conn = FakeConnection()
    assert body.write_to(conn) is True  # type: ignore[arg-type]
    assert conn.written == [b"abcd"] and conn.finished


def test_past_the_memory_bound_the_body_goes_to_a_file_and_is_pumped() -> None:
    pieces = [bytes([i]) * 60 for i in range(5)]  # 300 bytes, bound 100
    body = read(*pieces)
    assert body.size == 300 and not body.in_memory
    conn = FakeConnection()
    assert body.write_to(conn) is False  # type: ignore[arg-type]
    asyncio.run(body.pump(conn))  # type: ignore[arg-type]
    assert b"".join(conn.written) == b"".join(pieces) and conn.finished and conn.drains >= 1
    # A retry on another server sends it again, whole.
    again = FakeConnection()
    asyncio.run(body.pump(again))  # type: ignore[arg-type]
    assert b"".join(again.written) == b"".join(pieces)
    body.close()


def test_an_empty_body() -> None:
    body = read(b"")
    conn = FakeConnection()
    assert body.size == 0 and body.write_to(conn)  # type: ignore[arg-type]
    assert conn.written == [] and conn.finished


def test_over_max_body_bytes_is_413() -> None:
    with pytest.raises(ContentTooLarge):
        read(b"x" * 600, b"x" * 600, limit=1000)


def test_a_client_that_leaves_mid_body() -> None:
    with pytest.raises(ClientDisconnected):
        read(b"partial", disconnect=True)
