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
  response, a third less encoding time;
- a field that was sent as a table index is remembered with its encoding, for as long as the
  table does not change (``table.CountingTable``): the next response's Server, Via,
  Content-Type... cost a dict lookup each, not hpack's search of its tables (9% of an HTTP/2
  request's CPU before, bench/README.md "Session 9").  Fields with a volatile value, or that
  are never indexed, are encoded each time; at most ``MEMO_FIELDS`` are kept.

It relies on two of hpack's internal encoding helpers; without them it is hpack's own encoder
(``make_encoder``), so an hpack upgrade can cost speed but never correctness.
"""

from __future__ import annotations

from typing import Any

import hpack
from hpack.table import HeaderTable

from gateway.http2.table import CountingTable, counts_changes

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
MEMO_FIELDS = 64


class ResponseEncoder(hpack.Encoder):
    def __init__(self) -> None:
        super().__init__()
        self.header_table = CountingTable()
        self._memo: dict[tuple[bytes, bytes], bytes] = {}
        self._seen = 0  # the table's changes when the memo was made

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        table: CountingTable = self.header_table  # type: ignore[assignment]
        if table.resized or isinstance(headers, dict):
            # A size update opens the block (hpack writes it); a dict is reordered.
            return super().encode(headers, huffman=False)
        memo = self._memo
        block = []
        for field in headers:
            if table.changes != self._seen:  # an entry added or evicted: indices moved
                memo.clear()
                self._seen = table.changes
            # Only plain pairs: a NeverIndexedHeaderTuple equals the pair it holds.
            plain = type(field) is tuple and len(field) == 2
            encoded = memo.get(field) if plain else None
            if encoded is None:
                if plain:
                    name = field[0]
                    encoded = self.add((_bytes(name), _bytes(field[1])), False)
                    if (
                        table.changes == self._seen
                        and name not in VOLATILE
                        and name != b"set-cookie"
                        and len(memo) < MEMO_FIELDS
                    ):
                        memo[field] = encoded
                else:
                    encoded = super().encode([field], huffman=False)
            block.append(encoded)
        return b"".join(block)

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


def _bytes(text: bytes | str) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")


def make_encoder() -> hpack.Encoder:
    if (
        hasattr(hpack.Encoder, "_encode_literal")
        and hasattr(hpack.Encoder, "_encode_indexed_literal")
        and counts_changes()
    ):
        return ResponseEncoder()
    return hpack.Encoder()
