"""TLS termination: the ``ssl.SSLContext`` of the HTTPS listener and the choice of certificate.

The server follows Mozilla's "intermediate" profile (https://ssl-config.mozilla.org/): TLS 1.2
and 1.3 only, for TLS 1.2 only ECDHE key exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305),
and exactly the key-exchange groups X25519, P-256 and P-384 (OpenSSL would also offer X448,
P-521 and the ffdhe groups, which the profile leaves out).  TLS 1.3 suites are OpenSSL's
defaults, which are the ones Mozilla lists.

Session tickets are off (``OP_NO_TICKET``), as Mozilla's guidance says for servers that do not
rotate the ticket key: OpenSSL's key lives as long as the process, so one leaked key would
decrypt every recorded session since start-up.  Resumption still works from the server-side
session cache (OpenSSL then issues stateful TLS 1.3 tickets that are only cache ids).  The
cache holds at most OpenSSL's 20,480 sessions, the oldest making room; its sweep for expired
ones every 255 handshakes is off (``SSL_SESS_CACHE_NO_AUTO_CLEAR``, as OpenSSL suggests for a
server that wants no such pauses): the sweep walks the whole cache, 1% of a gateway worker's
CPU in ``bench/run.py --scenario handshake`` (perf: ``OPENSSL_LH_doall_arg``).  An expired
session is still refused when a client offers it.

The stdlib ``ssl`` module does everything here except setting the group list, which it has no
method for (pyOpenSSL cannot help: asyncio needs a stdlib context).  ``_set_groups`` makes the
one OpenSSL call through ctypes, checking first that it really holds the context's ``SSL_CTX``.

:class:`CertificateSelector` picks the certificate per handshake by SNI (ACME, bring-your-own or
the local CA's leaf) and lets any of them be replaced while running: a handshake copies the
certificate it gets, so new connections see the new one and open ones keep theirs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import ssl
import tempfile
import weakref
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from gateway.memory import CappedReadSSLObject
from gateway.tls.certs import CertificateError, certificate_names

logger = logging.getLogger("gateway.tls")

# Mozilla intermediate, TLS 1.2 part, ECDSA and RSA variants so a bring-your-own RSA
# certificate works as well as the local CA's ECDSA one.
INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
INTERMEDIATE_GROUPS = "X25519:P-256:P-384"
# The application protocols offered by the listener: the one list to extend (h2 goes first).
ALPN_PROTOCOLS = ["http/1.1"]
# With [gateway] http2 (the listener then picks HTTP/2 or HTTP/1.1 per connection).
ALPN_PROTOCOLS_H2 = ["h2", *ALPN_PROTOCOLS]
# RFC 8737: a TLS-ALPN-01 validation offers only this protocol.
ACME_TLS_ALPN = "acme-tls/1"


def server_ssl_context(
    cert_file: str | Path, key_file: str | Path, http2: bool = False
) -> ssl.SSLContext:
    """The context for the HTTPS listener, serving ``cert_file`` (leaf first) and ``key_file``."""
    context = _intermediate_context()
    context.set_alpn_protocols(ALPN_PROTOCOLS_H2 if http2 else ALPN_PROTOCOLS)
    load_certificate(context, cert_file, key_file)
    return context


def challenge_ssl_context(pem: bytes) -> ssl.SSLContext:
    """The context answering a TLS-ALPN-01 validation: ``pem`` holds its key and certificate,
    and ``acme-tls/1`` is the only protocol offered."""
    context = _intermediate_context()
    context.set_alpn_protocols([ACME_TLS_ALPN])
    # ssl loads certificates from files only; a private temp file lives for the load alone.
    fd, name = tempfile.mkstemp(prefix="acme-challenge-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        context.load_cert_chain(name)
    finally:
        os.unlink(name)
    return context


def load_certificate(context: ssl.SSLContext, cert_file: str | Path, key_file: str | Path) -> None:
    """Load (or replace) the certificate ``context`` serves; errors name the files."""
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except FileNotFoundError as exc:
        # OpenSSL does not say which of the two files is missing.
        missing = next((p for p in (cert_file, key_file) if not Path(p).exists()), cert_file)
        raise CertificateError(
            f"cannot load {missing}: no such file; check [tls] cert_file/key_file, "
            "or remove both to use the local CA"
        ) from exc
    except (ssl.SSLError, OSError) as exc:
        raise CertificateError(
            f"cannot load the certificate {cert_file} with the key {key_file}: {exc}; they "
            "must be PEM files, the key unencrypted and belonging to the first certificate"
        ) from exc


def client_ssl_context(ca_file: str | Path) -> ssl.SSLContext:
    """A verifying client context that trusts only ``ca_file``: for tests and health checks."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    return context


def _intermediate_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.sslobject_class = CappedReadSSLObject  # no mmap per read (gateway.memory)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    # TLS compression leaks secrets (CRIME); client-initiated renegotiation is a DoS lever and
    # HTTP/1.1 never needs it; tickets: see the module docstring.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    # Every offered cipher is strong, so let the client choose: a device without AES hardware
    # prefers ChaCha20 (Mozilla: ssl_prefer_server_ciphers off).
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    _set_groups(context, INTERMEDIATE_GROUPS)
    _no_session_cache_sweep(context)
    return context


# --- the group list, through ctypes ---------------------------------------------------------

# SSL_CTX_set1_groups_list and SSL_CTX_set/get_session_cache_mode are macros over SSL_CTX_ctrl.
_SSL_CTRL_SET_GROUPS_LIST = 92
_SSL_CTRL_SET_SESS_CACHE_MODE = 44
_SSL_CTRL_GET_SESS_CACHE_MODE = 45
SSL_SESS_CACHE_SERVER = 0x0002
SSL_SESS_CACHE_NO_AUTO_CLEAR = 0x0080
_libssl: Any = None


def _set_groups(context: ssl.SSLContext, groups: str) -> None:
    """``SSL_CTX_set1_groups_list(ctx, groups)``; a warning (not an error) where impossible."""
    try:
        if _ctx_ctrl(context, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode()) != 1:
            raise OSError(f"OpenSSL refused the group list {groups}")
    except (OSError, AttributeError, ImportError) as exc:
        logger.warning("cannot restrict the TLS groups to %s (%s); using OpenSSL's", groups, exc)


def _no_session_cache_sweep(context: ssl.SSLContext) -> None:
    """The server session cache without its sweep every 255 handshakes (module docstring);
    a debug line where impossible: the sweep then stays, nothing else changes."""
    mode = SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_AUTO_CLEAR
    try:
        _ctx_ctrl(context, _SSL_CTRL_SET_SESS_CACHE_MODE, mode, None)
    except (OSError, AttributeError, ImportError) as exc:
        logger.debug("cannot turn the TLS session cache's sweep off (%s)", exc)


def session_cache_mode(context: ssl.SSLContext) -> int:
    """``SSL_CTX_get_session_cache_mode``: what ``_no_session_cache_sweep`` set (for tests)."""
    return int(_ctx_ctrl(context, _SSL_CTRL_GET_SESS_CACHE_MODE, 0, None))


def _ctx_ctrl(context: ssl.SSLContext, command: int, larg: int, parg: bytes | None) -> int:
    """``SSL_CTX_ctrl`` on the context's ``SSL_CTX``, checked to be what it seems to be."""
    global _libssl
    if _libssl is None:
        import _ssl

        # The symbols of the very libssl the interpreter uses, via _ssl's dependencies.
        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        _libssl = lib
    # CPython's SSLContext object is PyObject_HEAD followed by the SSL_CTX pointer.
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer or _libssl.SSL_CTX_get_options(pointer) != context.options:
        raise OSError("unexpected SSLContext layout")
    return int(_libssl.SSL_CTX_ctrl(pointer, command, larg, parg))


# --- which certificate a handshake gets -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServedCertificate:
    """One certificate the listener serves, as ``/api/certificates`` lists it."""

    names: tuple[str, ...]
    not_after: datetime
    issuer: str
    source: str  # "local", "acme" or "file"

    @classmethod
    def from_file(cls, cert_file: str | Path, source: str) -> ServedCertificate:
        certificate = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())[0]
        return cls(
            names=certificate_names(certificate),
            not_after=certificate.not_valid_after_utc,
            issuer=certificate.issuer.rfc4514_string(),
            source=source,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "not_after": self.not_after.isoformat().replace("+00:00", "Z"),
            "issuer": self.issuer,
            "source": self.source,
        }


class CertificateSelector:
    """Chooses the certificate of every handshake by SNI, and swaps certificates live.

    The ``default`` context is the listener's own: it serves the local CA's leaf or the
    ``[tls] cert_file`` pair, and any name without a certificate of its own.  ``set_name``
    gives one name its own context (an ACME certificate); ``set_challenge`` answers a
    TLS-ALPN-01 validation for a name while it runs.
    """

    def __init__(
        self, default: ssl.SSLContext, served: ServedCertificate, http2: bool = False
    ) -> None:
        self.default = default
        self.http2 = http2  # every context made for a name offers what the default offers
        self.default_served = served
        self._by_name: dict[str, tuple[ssl.SSLContext, ServedCertificate]] = {}
        self._challenges: dict[str, ssl.SSLContext] = {}
        self._offers: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()
        default.sni_callback = self._select

    @classmethod
    def from_files(
        cls, cert_file: Path, key_file: Path, source: str, http2: bool = False
    ) -> CertificateSelector:
        context = server_ssl_context(cert_file, key_file, http2)
        return cls(context, ServedCertificate.from_file(cert_file, source), http2)

    def replace_default(self, cert_file: Path, key_file: Path, source: str) -> None:
        """Serve a renewed default certificate to every new handshake from now on."""
        load_certificate(self.default, cert_file, key_file)
        self.default_served = ServedCertificate.from_file(cert_file, source)

    def set_name(self, name: str, cert_file: Path, key_file: Path, source: str) -> None:
        """Serve ``cert_file`` to handshakes naming ``name`` (replacing any earlier one)."""
        context = server_ssl_context(cert_file, key_file, self.http2)
        self._by_name[name.lower()] = (context, ServedCertificate.from_file(cert_file, source))

    def set_challenge(self, name: str, context: ssl.SSLContext) -> None:
        self._challenges[name.lower()] = context
        self._watch_client_hellos(True)

    def clear_challenge(self, name: str) -> None:
        self._challenges.pop(name.lower(), None)
        self._watch_client_hellos(bool(self._challenges))

    def names_served_by(self, context: ssl.SSLContext) -> tuple[str, ...]:
        """The names on the certificate ``context`` serves (none for a challenge context)."""
        if context is self.default:
            return self.default_served.names
        for candidate, served in self._by_name.values():
            if candidate is context:
                return served.names
        return ()

    def certificates(self) -> list[ServedCertificate]:
        """Every certificate served: the default first, then one per name with its own."""
        return [self.default_served, *(served for _, served in self._by_name.values())]

    def context_for(
        self, server_name: str | None, offered_alpn: tuple[str, ...] | None
    ) -> ssl.SSLContext:
        """The context a handshake with this SNI and ALPN offer gets (pure choice)."""
        if server_name is None:
            return self.default
        name = server_name.lower().rstrip(".")
        challenge = self._challenges.get(name)
        # Without the ClientHello (see _watch_client_hellos) a validation cannot be told apart,
        # so the challenge wins for its few seconds: the name has no trusted certificate yet.
        if challenge is not None and (offered_alpn is None or ACME_TLS_ALPN in offered_alpn):
            return challenge
        entry = self._by_name.get(name)
        return entry[0] if entry is not None else self.default

    def _select(self, conn: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        # The server side of an SSLObject keeps neither the SNI nor which certificate it got:
        # the listener reads both here (421 for a Host the certificate does not cover, see
        # gateway.validation).
        conn.gateway_sni = server_name
        try:
            chosen = self.context_for(server_name, self._offers.pop(conn, None))
            if chosen is not context:
                conn.context = chosen
            conn.gateway_cert_names = self.names_served_by(chosen)
        except Exception:  # an exception here would abort the handshake with no trace
            logger.exception("choosing the certificate for %r failed", server_name)

    # A TLS-ALPN-01 validation offers only acme-tls/1, but the SNI callback cannot see ALPN.
    # While a challenge runs, the (private, stable since 3.8) message callback reads each
    # ClientHello's ALPN offer so ordinary clients of that name keep their certificate.
    def _watch_client_hellos(self, on: bool) -> None:
        if not hasattr(self.default, "_msg_callback"):
            return
        self.default._msg_callback = self._on_message if on else None

    def _on_message(
        self, conn: Any, direction: str, version: Any, content_type: Any, msg_type: Any, data: bytes
    ) -> None:
        if direction == "read" and data[:1] == b"\x01":
            offers = client_hello_alpn(data)
            if offers is not None:
                self._offers[conn] = offers


def client_hello_alpn(message: bytes) -> tuple[str, ...] | None:
    """The protocols a ClientHello handshake message offers by ALPN (RFC 7301): () when it
    offers none, None when it cannot be parsed."""
    try:
        if message[0] != 1:
            return None
        pos = 4 + 2 + 32  # handshake header, legacy_version, random
        pos += 1 + message[pos]  # legacy_session_id
        pos += 2 + int.from_bytes(message[pos : pos + 2])  # cipher_suites
        pos += 1 + message[pos]  # legacy_compression_methods
        end = pos + 2 + int.from_bytes(message[pos : pos + 2])
        pos += 2
        while pos + 4 <= end:
            kind = int.from_bytes(message[pos : pos + 2])
            length = int.from_bytes(message[pos + 2 : pos + 4])
            body = message[pos + 4 : pos + 4 + length]
            pos += 4 + length
            if kind != 16:  # application_layer_protocol_negotiation
                continue
            offers: list[str] = []
            item = 2
            while item < len(body):
                size = body[item]
                offers.append(body[item + 1 : item + 1 + size].decode("ascii", "replace"))
                item += 1 + size
            return tuple(offers)
    except IndexError:
        return None
    return ()
