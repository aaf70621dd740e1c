"""Events a response parser produces, in the style of h11: plain values, no I/O."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ResponseHead:
    status: int
    headers: list[tuple[bytes, bytes]]  # names lowercased, in wire order
    keep_alive: bool
    http_version: str


@dataclass(slots=True)
class EndOfMessage:
    pass


END_OF_MESSAGE = EndOfMessage()

# Body data is passed as plain ``bytes`` to save an allocation per chunk.
ResponseEvent = ResponseHead | bytes | EndOfMessage


class ProtocolError(Exception):
    """The upstream sent bytes that are not a valid HTTP/1.1 response."""
