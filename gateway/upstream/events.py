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


@dataclass(slots=True)
class Upgraded:
    """The server switched protocols (101, after a ``ResponseHead`` with that status): from
    here on the connection is a byte tunnel.  ``data`` holds the bytes that followed the head
    in the same read; nothing after it is HTTP any more."""

    data: bytes


@dataclass(slots=True)
class Interim:
    """An interim 1xx response before the final one (RFC 9110 §15.2), e.g. 103 Early Hints:
    relayed to the client, never cached.  100 (Continue) is not one of these: the gateway
    answers a client's Expect itself, and 101 ends HTTP on the connection (``Upgraded``)."""

    status: int
    headers: list[tuple[bytes, bytes]]  # names lowercased, in wire order


# Interim statuses a proxy forwards (RFC 9110 §15.2: all 1xx it did not ask for itself).
RELAYED_INTERIM = frozenset(range(102, 200))

# Body data is passed as plain ``bytes`` to save an allocation per chunk.
ResponseEvent = ResponseHead | bytes | EndOfMessage | Upgraded | Interim


class ProtocolError(Exception):
    """The upstream sent bytes that are not a valid HTTP/1.1 response."""


# The longest response head (status line and fields, interim heads included) an upstream may
# send; Nginx's equivalent is proxy_buffer_size ("upstream sent too big header").  Both parsers
# enforce it, so neither relays a head the other would refuse.
MAX_RESPONSE_HEAD = 64 * 1024
HEAD_TOO_BIG = f"upstream sent too big a head (over {MAX_RESPONSE_HEAD} bytes)"
