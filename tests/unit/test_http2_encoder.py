"""The response HPACK encoder (gateway/http2/encoder.py): what any decoder reads back is what
was sent; volatile values never take a dynamic-table slot, repeating ones do."""

from __future__ import annotations

import random
from typing import Any

import hpack

from gateway.http2.encoder import MEMO_FIELDS, ResponseEncoder, make_encoder


def response(request_id: bytes, length: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b":status", b"200"),
        (b"date", b"Sun, 06 Dec 2026 20:36:01 GMT"),
        (b"server", b"uvicorn"),
        (b"content-type", b"application/json"),
        (b"content-length", length),
        (b"via", b"1.1 gateway"),
        (b"x-request-id", request_id),
        (b"set-cookie", b"session=secret"),
        (b"x-custom", b"stable"),
    ]


def test_blocks_decode_to_what_was_sent() -> None:
    encoder, decoder = make_encoder(), hpack.Decoder()
    assert isinstance(encoder, ResponseEncoder)
    for i in range(50):
        headers = response(b"%032x" % i, b"%d" % (100 + i))
        assert decoder.decode(encoder.encode(headers), raw=True) == headers


def test_only_repeating_fields_enter_the_dynamic_table() -> None:
    encoder = make_encoder()
    first = encoder.encode(response(b"a" * 32, b"10"))
    second = encoder.encode(response(b"b" * 32, b"11"))
    names = {name for name, _ in encoder.header_table.dynamic_entries}
    assert names == {b"server", b"content-type", b"via", b"x-custom"}
    assert len(second) < len(first)  # the repeating fields are one byte each the second time


def test_set_cookie_is_never_indexed() -> None:
    block = make_encoder().encode([(b"set-cookie", b"session=secret")])
    # RFC 7541 §6.2.3: first byte 0001xxxx, with set-cookie's static index (55) continuing.
    assert block[0] & 0xF0 == 0x10
    decoded = hpack.Decoder().decode(block, raw=True)
    assert decoded == [(b"set-cookie", b"session=secret")]
    assert isinstance(decoded[0], hpack.NeverIndexedHeaderTuple)


def test_table_size_updates_still_reach_the_peer() -> None:
    encoder, decoder = make_encoder(), hpack.Decoder()
    encoder.header_table_size = 256
    decoder.decode(encoder.encode(response(b"c" * 32, b"12")), raw=True)
    assert decoder.header_table.maxsize == 256


def test_a_repeated_field_is_encoded_from_memory_until_the_table_moves() -> None:
    encoder = make_encoder()
    searched: list[tuple[bytes, bytes]] = []
    search = encoder.header_table.search

    def spy(name: bytes, value: bytes) -> Any:
        searched.append((name, value))
        return search(name, value)

    encoder.header_table.search = spy  # type: ignore[method-assign]
    stable = [(b":status", b"200"), (b"server", b"uvicorn"), (b"via", b"1.1 gateway")]
    first = encoder.encode(stable)  # server and via enter the table
    second = encoder.encode(stable)  # all three indexed, one byte each, and remembered
    searched.clear()
    assert encoder.encode(stable) == second != first
    assert searched == []
    # A new field enters the table: every index moves, so nothing remembered is used.
    new = encoder.encode([(b"x-new", b"1")])
    searched.clear()
    third = encoder.encode(stable)
    assert len(searched) == 3
    decoder = hpack.Decoder()
    assert decoder.decode(first + second, raw=True) == stable * 2
    assert decoder.decode(new, raw=True) == [(b"x-new", b"1")]
    assert decoder.decode(third, raw=True) == stable


def test_remembered_fields_decode_right_through_evictions_and_size_updates() -> None:
    """Random responses over a small table (entries evicted all the time), with size updates,
    str fields and never-indexed ones: hpack's own decoder reads back every block."""
    rng = random.Random(7)
    encoder, decoder = make_encoder(), hpack.Decoder()
    encoder.header_table_size = 200
    decoder.max_allowed_table_size = 4096
    names = [b"server", b"via", b"content-type", b"x-a", b"x-b", b"x-c", b"date"]
    for round_ in range(400):
        fields: list[Any] = [(b":status", rng.choice([b"200", b"404"]))]
        for _ in range(rng.randint(0, 6)):
            name, value = rng.choice(names), b"v%d" % rng.randint(0, 5)
            kind = rng.random()
            if kind < 0.1:
                fields.append(hpack.NeverIndexedHeaderTuple(name, value))
            elif kind < 0.2:
                fields.append((name.decode(), value.decode()))
            else:
                fields.append((name, value))
        if round_ % 50 == 49:
            encoder.header_table_size = rng.choice([0, 100, 200, 300])
        decoded = decoder.decode(encoder.encode(fields), raw=True)
        want = [
            (n if isinstance(n, bytes) else n.encode(), v if isinstance(v, bytes) else v.encode())
            for n, v in fields
        ]
        assert decoded == want
    assert len(encoder._memo) <= MEMO_FIELDS  # type: ignore[attr-defined]
