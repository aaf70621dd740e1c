"""hpack's dynamic table (RFC 7541 §2.3.2), counting what changes it.

An HPACK representation that names a table entry means the same field only while the table
holds what it held when the representation was made: an insertion shifts every dynamic index,
a size update may evict.  ``changes`` goes up with each of them, so what the encoder and the
decoder remember (``encoder.ResponseEncoder``, ``decoder.RequestDecoder``) is kept only
while it has not moved.
"""

from __future__ import annotations

from hpack.table import HeaderTable


class CountingTable(HeaderTable):
    changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @HeaderTable.maxsize.setter  # type: ignore[attr-defined,untyped-decorator]
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


def counts_changes() -> bool:
    """Whether this hpack keeps its table as ``CountingTable`` expects."""
    return isinstance(getattr(HeaderTable, "maxsize", None), property) and hasattr(
        HeaderTable, "add"
    )
