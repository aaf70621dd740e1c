"""The HPACK decoder for requests: hpack's, remembering the header blocks that come back.

A client sends nearly the same header block with every request: once the first request has
put ``:authority``, ``user-agent``, ``accept`` and the like in the dynamic table (RFC 7541
§2.3.2), the next request for a path already seen is a block of table indices, byte for byte
the one before.  hpack decodes it field by field in Python every time: 9% of an HTTP/2
request's CPU (one process, ``h2load -m10``, bench/README.md "Session 9").

So a block whose decoding left the dynamic table as it was is remembered, and the same bytes
decode to the same fields for as long as the table does not change: any insertion or size
update (``table.CountingTable``) forgets every remembered block.  A block that changes the table
(a literal with incremental indexing, a size update) is never remembered, and the limits hpack
checks (the header list size, the table size the client may use) are checked as before, since
a remembered block is one that passed them with the same table.  Only small blocks of few
fields are kept, a few per connection, so what a client can make the gateway hold is bounded
(``MEMO_BLOCK`` bytes of block and ``MEMO_FIELDS`` fields, ``MEMO_ENTRIES`` times).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hpack

from gateway.http2.table import CountingTable, counts_changes

MEMO_BLOCK = 512  # bytes of header block
MEMO_FIELDS = 32
MEMO_ENTRIES = 8


class RequestDecoder(hpack.Decoder):
    def __init__(self, max_header_list_size: int = hpack.hpack.DEFAULT_MAX_HEADER_LIST_SIZE):
        super().__init__(max_header_list_size)
        self.header_table = CountingTable()
        self.max_allowed_table_size = self.header_table.maxsize
        self._memo: dict[bytes, tuple[Any, ...]] = {}
        self._seen = (0, max_header_list_size)  # the table and limit the memo was made with

    def decode(self, data: bytes, raw: bool = False) -> Iterable[Any]:
        if not raw or len(data) > MEMO_BLOCK:
            return super().decode(data, raw)
        table: CountingTable = self.header_table  # type: ignore[assignment]
        memo = self._memo
        seen = (table.changes, self.max_header_list_size)
        if seen != self._seen:
            memo.clear()
            self._seen = seen
        key = bytes(data)
        found = memo.get(key)
        if found is not None:
            self._assert_valid_table_size()  # the allowed size may have shrunk since
            return list(found)
        headers = super().decode(key, raw=True)
        if table.changes == seen[0] and len(headers) <= MEMO_FIELDS:  # type: ignore[arg-type]
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            memo[key] = tuple(headers)
        return headers


def make_decoder() -> hpack.Decoder:
    """hpack's own decoder when this hpack keeps its table differently."""
    if counts_changes() and hasattr(hpack.Decoder, "_assert_valid_table_size"):
        return RequestDecoder()
    return hpack.Decoder()
