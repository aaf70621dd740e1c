"""Targeted cache-control fields (RFC 9213), such as ``CDN-Cache-Control``.

The cache keeps a *target list*: the field names it obeys, most specific first (§2.1), from
``[cache] targeted_fields``.  For each response the first listed field with a valid,
non-empty value decides the caching policy, and ``Cache-Control`` and ``Expires`` are then
ignored by this cache; when none is usable, ``Cache-Control`` applies as usual.  The fields
on the list are meant for this cache alone, so ``storing`` never stores them and they are
not sent on downstream; other targeted fields pass through untouched (§2.1).

A targeted field is a Structured Fields Dictionary (RFC 8941 §3.2, §4.2.2), parsed strictly
here: a field that fails to parse is ignored as a whole (RFC 9213 §2.2).  Its members are then
read with the same semantics and precedence as Cache-Control directives (§2.1).
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

from gateway.cache.fields import (
    CacheControl,
    HeaderPairs,
    directives_to_cache_control,
    header_lines,
    parse_cache_control,
)
from gateway.headers import Headers

# The target list when the configuration names none: the field RFC 9213 §3 defines.
DEFAULT_TARGETS: tuple[bytes, ...] = (b"cdn-cache-control",)

# Directives whose value must be an Integer (RFC 9213 §2.2 infers the types from RFC 9111 §5.2:
# delta-seconds are Integers); anything else in them is not consumed: it counts as invalid.
_DELTA_DIRECTIVES = frozenset(
    {"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error", "max-stale", "min-fresh"}
)
_INVALID = "invalid"  # an argument that delta_seconds rejects

_KEY_START = frozenset(string.ascii_lowercase + "*")
_KEY_CHARS = frozenset(string.ascii_lowercase + string.digits + "_-.*")
_TCHAR = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
_TOKEN_CHARS = _TCHAR | {":", "/"}
_BASE64 = frozenset(string.ascii_letters + string.digits + "+/=")


class Token(str):
    """An sf-token (RFC 8941 §3.3.4), told apart from an sf-string."""

    __slots__ = ()


class InnerList(tuple[object, ...]):
    """An inner list (RFC 8941 §3.1.1); never a valid cache directive value."""

    __slots__ = ()


class _Invalid(Exception):
    """The field does not parse as a Structured Fields Dictionary."""


class _Parser:
    """RFC 8941 §4.2 parsing of one combined field value; raises _Invalid on any error."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    @property
    def done(self) -> bool:
        return self.at >= len(self.text)

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        if not char:
            raise _Invalid
        self.at += 1
        return char

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.at += 1

    def dictionary(self) -> dict[str, object]:
        """§4.2.2; parameters of members are parsed and dropped (RFC 9213 §2.2 ignores them)."""
        members: dict[str, object] = {}
        self.skip(" ")
        while not self.done:
            key = self.key()
            if self.peek() == "=":
                self.at += 1
                members[key] = self.item_or_inner_list()
            else:
                members[key] = True
                self.parameters()
            self.skip(" \t")
            if self.done:
                break
            if self.take() != ",":
                raise _Invalid
            self.skip(" \t")
            if self.done:
                raise _Invalid  # a trailing comma
        return members

    def key(self) -> str:
        if self.peek() not in _KEY_START or not self.peek():
            raise _Invalid
        start = self.at
        while self.peek() and self.peek() in _KEY_CHARS:
            self.at += 1
        return self.text[start : self.at]

    def item_or_inner_list(self) -> object:
        if self.peek() != "(":
            value = self.bare_item()
            self.parameters()
            return value
        self.at += 1
        items: list[object] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.at += 1
                self.parameters()
                return InnerList(items)
            items.append(self.bare_item())
            self.parameters()
            if self.peek() not in (" ", ")") or not self.peek():
                raise _Invalid

    def parameters(self) -> None:
        while self.peek() == ";":
            self.at += 1
            self.skip(" ")
            self.key()
            if self.peek() == "=":
                self.at += 1
                self.bare_item()

    def bare_item(self) -> object:
        char = self.peek()
        if char == "-" or char.isdigit() and char.isascii():
            return self.number()
        if char == '"':
            return self.string()
        if char == "*" or char.isascii() and char.isalpha():
            return self.token()
        if char == ":":
            return self.byte_sequence()
        if char == "?":
            self.at += 1
            flag = self.take()
            if flag not in "01":
                raise _Invalid
            return flag == "1"
        raise _Invalid

    def number(self) -> int | float:
        start = self.at
        if self.peek() == "-":
            self.at += 1
        digits_start = self.at
        while self.peek().isdigit() and self.peek().isascii():
            self.at += 1
        integer = self.text[digits_start : self.at]
        if not integer:
            raise _Invalid
        if self.peek() != ".":
            if len(integer) > 15:
                raise _Invalid
            return int(self.text[start : self.at])
        self.at += 1
        fraction_start = self.at
        while self.peek().isdigit() and self.peek().isascii():
            self.at += 1
        fraction = self.text[fraction_start : self.at]
        if len(integer) > 12 or not 1 <= len(fraction) <= 3:
            raise _Invalid
        return float(self.text[start : self.at])

    def string(self) -> str:
        self.at += 1
        out: list[str] = []
        while True:
            char = self.take()
            if char == "\\":
                escaped = self.take()
                if escaped not in '"\\':
                    raise _Invalid
                out.append(escaped)
            elif char == '"':
                return "".join(out)
            elif not " " <= char <= "~":
                raise _Invalid
            else:
                out.append(char)

    def token(self) -> Token:
        start = self.at
        self.at += 1
        while self.peek() and self.peek() in _TOKEN_CHARS:
            self.at += 1
        return Token(self.text[start : self.at])

    def byte_sequence(self) -> bytes:
        self.at += 1
        start = self.at
        while self.peek() and self.peek() in _BASE64:
            self.at += 1
        if self.take() != ":":
            raise _Invalid
        return self.text[start : self.at - 1].encode("ascii")


def parse_dictionary(lines: Sequence[bytes]) -> dict[str, object] | None:
    """The Structured Fields Dictionary of a field's lines (RFC 8941 §4.2: lines joined with
    commas), or None when it fails to parse; never raises."""
    try:
        text = b", ".join(lines).decode("ascii")
        return _Parser(text).dictionary()
    except (_Invalid, UnicodeDecodeError):
        return None


def _as_directives(members: dict[str, object]) -> Iterable[tuple[str, str | None]]:
    """Dictionary members as the (name, argument) pairs Cache-Control parsing yields."""
    for name, value in members.items():
        if value is True:
            yield name, None
        elif value is False or isinstance(value, InnerList | bytes):
            continue  # ?0 means absent; lists and byte sequences are no directive values
        elif name in _DELTA_DIRECTIVES:
            is_integer = isinstance(value, int) and not isinstance(value, bool)
            yield name, str(value) if is_integer else _INVALID
        else:
            yield name, str(value)


def targeted_cache_control(
    response_headers: HeaderPairs, targets: Sequence[bytes]
) -> CacheControl | None:
    """The directives of the first field on the target list with a valid, non-empty value
    (RFC 9213 §2.1), or None when no listed field is usable (§2.2: empty or unparsable ones
    are ignored).  ``response_headers`` and ``targets`` are lowercase."""
    for name in targets:
        lines = header_lines(response_headers, name)
        if not lines:
            continue
        members = parse_dictionary(lines)
        if members:
            return directives_to_cache_control(_as_directives(members))
    return None


def effective_cache_control(
    response_headers: HeaderPairs, targets: Sequence[bytes]
) -> tuple[CacheControl, bool]:
    """(the directives this cache obeys, whether they came from a targeted field).  When they
    did, ``Expires`` must be ignored too (RFC 9213 §2.1)."""
    targeted = targeted_cache_control(response_headers, targets) if targets else None
    if targeted is not None:
        return targeted, True
    return parse_cache_control(header_lines(response_headers, b"cache-control")), False


def without_targeted(headers: Headers, targets: Sequence[bytes]) -> Headers:
    """``headers`` without the fields on the target list: they were meant for this cache and
    are not sent on downstream (see the module docstring).  The same list when there are none,
    the usual case, so the forwarding path pays one scan."""
    if not targets:
        return headers
    for name, _ in headers:  # a loop, not any() over a generator: on every forwarded response
        if name in targets:
            return [(name, value) for name, value in headers if name not in targets]
    return headers
