"""TLS termination: the ``ssl.SSLContext`` of the HTTPS listener (and one for clients of it).

The server follows Mozilla's "intermediate" profile (https://ssl-config.mozilla.org/): TLS 1.2
and 1.3 only, and for TLS 1.2 only ECDHE key exchange with AEAD ciphers (AES-GCM,
ChaCha20-Poly1305), so every connection has forward secrecy and no CBC construction is ever
negotiated.  TLS 1.3 suites are OpenSSL's defaults (AES-GCM and ChaCha20-Poly1305 again): the
stdlib cannot change them, and Mozilla recommends exactly those.  The stdlib ``ssl`` module covers
everything needed, so pyOpenSSL is not used.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.tls.certs import CertificateError

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
# The proxy speaks HTTP/1.1 only; announcing it lets clients skip guessing.
ALPN_PROTOCOLS = ["http/1.1"]


def server_ssl_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """The context for the HTTPS listener, serving ``cert_file`` (leaf first) and ``key_file``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    # TLS compression leaks secrets (CRIME); client-initiated renegotiation is a DoS lever and
    # HTTP/1.1 never needs it.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # Every offered cipher is strong, so let the client choose: a device without AES hardware
    # prefers ChaCha20 (Mozilla: ssl_prefer_server_ciphers off).
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(ALPN_PROTOCOLS)
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
    return context


def client_ssl_context(ca_file: str | Path) -> ssl.SSLContext:
    """A verifying client context that trusts only ``ca_file``: for tests and health checks."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    return context
