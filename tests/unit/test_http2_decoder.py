"""The request HPACK decoder (gateway/http2/decoder.py): a remembered header block decodes to
what hpack's own decoder gives, through every change of the dynamic table; what it keeps is
bounded."""

from __future__ import annotations

import random
from typing import Any

import hpack
import pytest

from gateway.http2.decoder import (
    MEMO_BLOCK,
    MEMO_ENTRIES,
    MEMO_FIELDS,
    RequestDecoder,
    make_decoder,
)

REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"localhost"),
    (b":path", b"/status"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]


def test_the_same_block_is_decoded_once_while_the_table_holds() -> None:
    encoder, decoder = hpack.Encoder(), make_decoder()
    assert isinstance(decoder, RequestDecoder)
    decoder.decode(encoder.encode(REQUEST), raw=True)  # literals: the table changes
    block = encoder.encode(REQUEST)  # all indexed now
    assert encoder.encode(REQUEST) == block
    assert decoder.decode(block, raw=True) == REQUEST
    calls: list[Any] = []
    indexed = decoder._decode_indexed

    def spy(data: Any) -> Any:
        calls.append(data)
        return indexed(data)

    decoder._decode_indexed = spy  # type: ignore[method-assign]
    first, second = decoder.decode(block, raw=True), decoder.decode(block, raw=True)
    assert first == second == REQUEST and first is not second
    assert calls == []
    # A new entry moves every dynamic index: the block is decoded again.
    decoder.decode(encoder.encode([(b"x-new", b"1")]), raw=True)
    assert decoder.decode(block, raw=True) != REQUEST  # the same bytes mean other fields now
    assert calls


def test_random_blocks_decode_as_hpack_decodes_them() -> None:
    """A client's blocks over a small table (evictions), size updates, never-indexed fields
    and repeats: the remembering decoder and hpack's agree on every block."""
    rng = random.Random(11)
    encoder, ours, reference = hpack.Encoder(), make_decoder(), hpack.Decoder()
    paths = [b"/", b"/a", b"/b", b"/static/app.js", b"/api/items?page=2"]
    for round_ in range(600):
        fields: list[Any] = [(b":method", b"GET"), (b":path", rng.choice(paths))]
        if rng.random() < 0.3:
            fields.append((b"cookie", b"s=%d" % rng.randint(0, 3)))
        if rng.random() < 0.1:
            fields.append(hpack.NeverIndexedHeaderTuple(b"authorization", b"Bearer x"))
        if round_ % 60 == 59:
            encoder.header_table_size = rng.choice([0, 64, 128, 4096])
        block = encoder.encode(fields, huffman=rng.random() < 0.5)
        got, want = ours.decode(block, raw=True), reference.decode(block, raw=True)
        assert got == want
        assert [type(h) for h in got] == [type(h) for h in want]
        assert ours.header_table.dynamic_entries == reference.header_table.dynamic_entries


def test_limits_hold_for_remembered_blocks() -> None:
    encoder, decoder = hpack.Encoder(), make_decoder()
    decoder.decode(encoder.encode(REQUEST), raw=True)
    block = encoder.encode(REQUEST)
    decoder.decode(block, raw=True)
    decoder.decode(block, raw=True)  # remembered
    decoder.max_header_list_size = 10
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.decode(block, raw=True)
    decoder.max_header_list_size = 65536
    decoder.decode(block, raw=True)  # remembered again
    decoder.max_allowed_table_size = 0  # a SETTINGS_HEADER_TABLE_SIZE the client ignored
    with pytest.raises(hpack.InvalidTableSizeError):
        decoder.decode(block, raw=True)


def test_what_is_remembered_is_bounded() -> None:
    encoder, decoder = hpack.Encoder(), make_decoder()
    assert isinstance(decoder, RequestDecoder)
    many = [(b"x-%d" % i, b"v") for i in range(MEMO_FIELDS + 1)]
    decoder.decode(encoder.encode(many), raw=True)  # into the table
    decoder.decode(encoder.encode(many), raw=True)  # indexed: a short block, too many fields
    # Never indexed, so the table does not change: a block too big to keep.
    big = [hpack.NeverIndexedHeaderTuple(b"x-big", b"v" * MEMO_BLOCK)]
    decoder.decode(encoder.encode(big, huffman=False), raw=True)
    assert decoder._memo == {}
    for i in range(3 * MEMO_ENTRIES):
        fields = [(b":path", b"/%d" % i)]
        block = encoder.encode(fields)
        decoder.decode(block, raw=True)
        decoder.decode(encoder.encode(fields), raw=True)
        assert len(decoder._memo) <= MEMO_ENTRIES
