"""Which stored responses a request means: the primary key (RFC 9111 §2), the Vary key that
selects among a URI's variants (§4.1), and the keys an unsafe request invalidates (§4.4)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from gateway.cache.fields import HeaderPairs, header_lines, lowered

if TYPE_CHECKING:
    from gateway.cache.storing import StoredResponse

# The request header values a stored response was selected by (RFC 9111 §4.1): one
# (name, normalized value) pair per Vary name, sorted; None marks a header the request lacked.
VaryKey = tuple[tuple[bytes, bytes | None], ...]

# RFC 9110 §9.2.1; every other method, known or not, is unsafe for §4.4 invalidation.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


@functools.lru_cache(maxsize=4096)
def primary_key(scheme: str, host: str | bytes, path: str | bytes, query: str | bytes = "") -> str:
    """The cache key of a target URI (RFC 9111 §2): ``scheme://host[:port]path[?query]``.

    Scheme and host are lowercased and the scheme's default port dropped; path and query are
    kept exactly as received (pass ASGI ``raw_path`` and ``query_string``), so the same form
    comes back from Location headers in ``invalidation_keys``.

    Memoized (1.2 µs a call otherwise): it is made for every GET a caching route sees, and
    a server sees the same few targets over and over.
    """
    scheme = scheme.lower()
    authority = _text(host).strip().lower()
    if authority.startswith("["):  # IPv6 literal: [::1]:8443
        name, _, rest = authority.partition("]")
        name, port = name + "]", rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = authority.partition(":")
    if port and port != _DEFAULT_PORTS.get(scheme):
        name = f"{name}:{port}"
    key = f"{scheme}://{name}{_text(path) or '/'}"
    query = _text(query)
    return f"{key}?{query}" if query else key


def vary_names(response_headers: HeaderPairs) -> tuple[bytes, ...]:
    """The request header names listed in Vary (RFC 9111 §4.1), lowercase, sorted, unique;
    ``b"*"`` when present means "varies on everything" (never stored)."""
    names = {
        part.strip().lower()
        for line in header_lines(response_headers, b"vary")
        for part in line.split(b",")
    }
    names.discard(b"")
    return tuple(sorted(names))


def _normalized_field(lines: list[bytes]) -> bytes | None:
    # RFC 9111 §4.1 allows matching after combining field lines and removing whitespace
    # where the syntax allows it; empty list elements are ignored (RFC 9110 §5.6.1).
    if not lines:
        return None
    return b", ".join(part for line in lines for p in line.split(b",") if (part := p.strip()))


# Preference lists whose members mean the same in any order, case and spelling of their
# weights (RFC 9110 §12.4.2, §12.5.3, §12.5.4): normalised so equivalent requests share one
# variant (§4.1 allows normalising "in a way that is known to have identical semantics").
PREFERENCE_FIELDS = frozenset({b"accept-encoding", b"accept-language", b"accept-charset"})


def _qvalue(text: bytes) -> float | None:
    """RFC 9110 §12.4.2 qvalue: ``0[.ddd]`` or ``1[.000]``; None when it is not one."""
    whole, dot, decimals = text.partition(b".")
    if whole not in (b"0", b"1") or len(decimals) > 3 or not decimals.isdigit() and decimals:
        return None
    if dot and not decimals:
        return float(whole)  # "1." is lenient but unambiguous
    value = float(text)
    return value if value <= 1 else None


def normalized_preferences(lines: list[bytes]) -> bytes:
    """A preference list in a canonical form: members lowercased, weights written the short
    way (``q=1`` dropped), sorted by weight then name, duplicates removed.  A member whose
    weight does not parse is kept verbatim (lowercased), so it never matches a valid one."""
    members: set[tuple[float, bytes]] = set()
    for line in lines:
        for element in line.split(b","):
            element = element.strip().lower()
            if not element:
                continue
            name, *parameters = (part.strip() for part in element.split(b";"))
            weight: float | None = 1.0
            others: list[bytes] = []
            for parameter in parameters:
                key, _, value = parameter.partition(b"=")
                if key.strip() == b"q":
                    weight = _qvalue(value.strip())
                else:
                    others.append(parameter)
            if weight is None:
                members.add((1.0, element))
                continue
            text = b";".join([name, *others])
            if weight != 1.0:
                text += b";q=" + f"{weight:.3f}".rstrip("0").rstrip(".").encode("ascii")
            members.add((weight, text))
    return b", ".join(text for _, text in sorted(members, key=lambda m: (-m[0], m[1])))


def vary_key(request_headers: HeaderPairs, names: Iterable[bytes]) -> VaryKey:
    """The selecting header values of a request for the given Vary names (RFC 9111 §4.1).

    An absent header (None) only matches an absent one; an empty header is b"".
    Accept-Encoding, Accept-Language and Accept-Charset are compared normalised
    (``normalized_preferences``): ``gzip, br`` selects what ``BR;q=1.0, gzip`` stored.
    """
    key: list[tuple[bytes, bytes | None]] = []
    for name in names:
        lines = header_lines(request_headers, name)
        if lines and name in PREFERENCE_FIELDS:
            key.append((name, normalized_preferences(lines)))
        else:
            key.append((name, _normalized_field(lines)))
    return tuple(key)


def vary_matches(entry: StoredResponse, request_headers: HeaderPairs) -> bool:
    """Whether ``entry`` may be selected for this request (RFC 9111 §4.1)."""
    if not entry.vary:
        return True
    return entry.vary == vary_key(request_headers, (name for name, _ in entry.vary))


# --- invalidation ---------------------------------------------------------------------------


def _origin(key: str) -> str:
    scheme, _, rest = key.partition("://")
    return scheme + "://" + rest.split("/", 1)[0]


def invalidation_keys(
    method: str, status: int, target_key: str, response_headers: HeaderPairs
) -> list[str]:
    """Primary keys an unsafe request's non-error response invalidates (RFC 9111 §4.4).

    The target URI itself, plus the URIs in Location and Content-Location when they have the
    same origin as the target (a response must not invalidate another site's entries).
    ``target_key`` is the request's ``primary_key``; relative references resolve against it.
    """
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    response_headers = lowered(response_headers)
    keys = [target_key]
    for name in (b"location", b"content-location"):
        for value in header_lines(response_headers, name):
            try:
                parts = urlsplit(urljoin(target_key, value.decode("latin-1").strip()))
            except ValueError:
                continue
            if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
                continue
            host = parts.netloc.rpartition("@")[2]
            key = primary_key(parts.scheme, host, parts.path, parts.query)
            if _origin(key) == _origin(target_key) and key not in keys:
                keys.append(key)
    return keys
