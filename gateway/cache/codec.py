"""The bytes a ``StoredResponse`` is kept as outside this process (``stores.shared``,
``stores.redis``), and the per-process memo that spares a hit decoding them again.

Layout: ``MAGIC``, an 8-byte stamp (new on every ``encode``), the length of a JSON document
(4 bytes, big-endian), the JSON (every field but the body and the policy), then the body as
it is.  JSON rather than pickle: whoever can write to the store (a shared Redis) must not be
able to make a gateway run code; a malformed value is a ``CodecError``, i.e. a miss.  Header
bytes travel as latin-1 text, which maps every byte value to one character and back.  The
policy is not stored: the reading gateway's own ``CachePolicy`` is attached, as its config
says which rules it obeys.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any

from gateway.cache.fields import CacheControl
from gateway.cache.keys import VaryKey
from gateway.cache.policy import CachePolicy
from gateway.cache.storing import StoredResponse
from gateway.headers import Headers

MAGIC = b"PGC1"
STAMP_BYTES = 8
_HEAD = len(MAGIC) + STAMP_BYTES + 4
# CacheControl fields holding sets of field names (bytes) and of directive names (str).
_BYTES_SETS = ("no_cache_fields", "private_fields")
_STR_SETS = ("invalid",)


class CodecError(ValueError):
    """A stored value that is not an entry this codec wrote."""


def encode(entry: StoredResponse) -> bytes:
    meta = {
        "status": entry.status,
        "headers": _pairs_out(entry.headers),
        "request_time": entry.request_time,
        "response_time": entry.response_time,
        "vary": [[n.decode("latin-1"), _opt_out(v)] for n, v in entry.vary],
        "cc": _cc_out(entry.cache_control),
        "freshness_lifetime": entry.freshness_lifetime,
        "corrected_initial_age": entry.corrected_initial_age,
        "date": entry.date,
        "etag": _opt_out(entry.etag),
        "last_modified": entry.last_modified,
        "size": entry.size,
        "heuristic": entry.heuristic,
        "targeted": _pairs_out(entry.targeted) if entry.targeted is not None else None,
    }
    doc = json.dumps(meta, separators=(",", ":")).encode()
    return b"".join((MAGIC, os.urandom(STAMP_BYTES), len(doc).to_bytes(4, "big"), doc, entry.body))


def stamp_of(value: bytes | memoryview) -> bytes:
    """The stamp that tells one ``encode`` from any other (no decoding)."""
    return bytes(value[len(MAGIC) : len(MAGIC) + STAMP_BYTES])


def decode(value: bytes, policy: CachePolicy) -> StoredResponse:
    if len(value) < _HEAD or value[: len(MAGIC)] != MAGIC:
        raise CodecError("not a stored entry")
    length = int.from_bytes(value[_HEAD - 4 : _HEAD], "big")
    try:
        meta = json.loads(value[_HEAD : _HEAD + length])
        return StoredResponse(
            status=int(meta["status"]),
            headers=_pairs_in(meta["headers"]),
            body=value[_HEAD + length :],
            request_time=float(meta["request_time"]),
            response_time=float(meta["response_time"]),
            vary=decode_vary_list(meta["vary"]),
            cache_control=_cc_in(meta["cc"]),
            freshness_lifetime=float(meta["freshness_lifetime"]),
            corrected_initial_age=float(meta["corrected_initial_age"]),
            date=float(meta["date"]),
            etag=_opt_in(meta["etag"]),
            last_modified=_float_or_none(meta["last_modified"]),
            size=int(meta["size"]),
            heuristic=bool(meta["heuristic"]),
            targeted=_pairs_in(meta["targeted"]) if meta["targeted"] is not None else None,
            policy=policy,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CodecError(f"malformed stored entry: {exc!r}") from exc


def encode_vary(vary: VaryKey) -> bytes:
    """A Vary key as bytes (a store's sub-key for one variant)."""
    return json.dumps([[n.decode("latin-1"), _opt_out(v)] for n, v in vary]).encode()


def decode_vary_list(items: Any) -> VaryKey:
    return tuple((str(n).encode("latin-1"), _opt_in(v)) for n, v in items)


class DecodedEntries:
    """This process's decoded copies of recently hit entries, by slot, at most ``max_bytes``
    of bodies: a hit whose stored stamp matches costs no decoding.  The store stays the
    truth (the stamp is read on every lookup); this only saves CPU."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, tuple[bytes, StoredResponse]] = OrderedDict()
        self._bytes = 0

    def get(self, slot: bytes, stamp: bytes) -> StoredResponse | None:
        found = self._entries.get(slot)
        if found is None or found[0] != stamp:
            return None
        self._entries.move_to_end(slot)
        return found[1]

    def add(self, slot: bytes, stamp: bytes, entry: StoredResponse) -> None:
        self.discard(slot)
        if entry.size > self.max_bytes:
            return
        while self._bytes + entry.size > self.max_bytes:
            _, (_, old) = self._entries.popitem(last=False)
            self._bytes -= old.size
        self._entries[slot] = (stamp, entry)
        self._bytes += entry.size

    def discard(self, slot: bytes) -> None:
        found = self._entries.pop(slot, None)
        if found is not None:
            self._bytes -= found[1].size

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


def _pairs_out(headers: Headers) -> list[list[str]]:
    return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]


def _pairs_in(items: Any) -> Headers:
    return [(str(n).encode("latin-1"), str(v).encode("latin-1")) for n, v in items]


def _opt_out(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _opt_in(value: Any) -> bytes | None:
    return str(value).encode("latin-1") if value is not None else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if value is not None else None


def _cc_out(cc: CacheControl) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in CacheControl.__dataclass_fields__:
        value = getattr(cc, name)
        if name in _BYTES_SETS:
            value = sorted(v.decode("latin-1") for v in value)
        elif name in _STR_SETS:
            value = sorted(value)
        out[name] = value
    return out


def _cc_in(data: Any) -> CacheControl:
    values: dict[str, Any] = {}
    for name in CacheControl.__dataclass_fields__:
        value = data[name]
        if name in _BYTES_SETS:
            value = frozenset(str(v).encode("latin-1") for v in value)
        elif name in _STR_SETS:
            value = frozenset(str(v) for v in value)
        values[name] = value
    return CacheControl(**values)
