"""The response HPACK encoder (gateway/http2/encoder.py): what any decoder reads back is what
was sent; volatile values never take a dynamic-table slot, repeating ones do."""

from __future__ import annotations

import hpack

from gateway.http2.encoder import ResponseEncoder, make_encoder


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
