"""The HPACK encoder for responses: hpack's, minus the work that buys a proxy nothing.

Measured on this project's responses (nine fields), hpack's default encoding spends most of
its time on two things: Huffman-coding every literal, and scanning a dynamic table full of
values that never come back.  So:

- fields whose value changes with (almost) every response -- Date, Content-Length,
  X-Request-ID, ETag... -- are sent as literals *without indexing* (RFC 7541 §6.2.2): a table
  slot for one of them would only evict the fields that do repeat (Server, Content-Type, Via,
  X-Cache...), which stay indexed and cost one byte from the second response on;
  ``Set-Cookie`` is *never indexed* (§7.1.3: secrets stay out of any table on the way);
- literals are not Huffman-coded (§5.2 leaves it to the encoder): a few bytes more per
  response, a third less encoding time.

It relies on two of hpack's internal encoding helpers; without them it is hpack's own encoder
(``make_encoder``), so an hpack upgrade can cost speed but never correctness.
"""

from __future__ import annotations

from typing import Any

import hpack
from hpack.table import HeaderTable

VOLATILE = frozenset(
    {
        b"date",
        b"content-length",
        b"x-request-id",
        b"etag",
        b"last-modified",
        b"age",
        b"expires",
        b"server-timing",
        b"content-range",
        b"location",
    }
)
_NONE = b"\x00"  # literal without indexing (RFC 7541 §6.2.2)
_NEVER = b"\x10"  # literal never indexed (§6.2.3)


class ResponseEncoder(hpack.Encoder):
    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return super().encode(headers, huffman=False)

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        name, value = to_add
        if name == b"set-cookie":
            sensitive = True
        elif name not in VOLATILE:
            return super().add(to_add, sensitive, huffman)
        indexbit = _NEVER if sensitive else _NONE
        static = HeaderTable.STATIC_TABLE_MAPPING.get(name)
        if static is not None:
            return self._encode_indexed_literal(static[0], value, indexbit, huffman)
        return self._encode_literal(name, value, indexbit, huffman)


def make_encoder() -> hpack.Encoder:
    if hasattr(hpack.Encoder, "_encode_literal") and hasattr(
        hpack.Encoder, "_encode_indexed_literal"
    ):
        return ResponseEncoder()
    return hpack.Encoder()
