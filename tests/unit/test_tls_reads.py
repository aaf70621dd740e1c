"""The listener's TLS reads stay below glibc's mmap threshold (``gateway.memory``): uvloop asks
``SSLObject.read`` for 256 KiB at a time, CPython allocates that much before it knows how
little a record holds, and with the pinned threshold every request then cost an
mmap/mremap/munmap and a page fault.  Driven in memory: two SSLObjects, no sockets."""

from __future__ import annotations

import ssl

import pytest

from gateway.config import TLSSettings
from gateway.memory import MMAP_THRESHOLD, READ_CAP, CappedReadSSLObject
from gateway.tls.certs import CertificatePaths, ensure_certificates
from gateway.tls.context import client_ssl_context, server_ssl_context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    tls = TLSSettings(dir=tmp_path_factory.mktemp("tls") / "certs")
    return ensure_certificates(tls, ("localhost",))


def pump(source: ssl.MemoryBIO, target: ssl.MemoryBIO) -> None:
    data = source.read()
    if data:
        target.write(data)


def connected(certs: CertificatePaths) -> tuple[ssl.SSLObject, ssl.SSLObject, list[ssl.MemoryBIO]]:
    assert certs.ca_file is not None
    server_context = server_ssl_context(certs.cert_file, certs.key_file)
    client_context = client_ssl_context(certs.ca_file)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        pump(c_out, s_in)
        pump(s_out, c_in)
    client.do_handshake()
    server.do_handshake()
    return client, server, [c_in, c_out, s_in, s_out]


def test_the_listener_context_reads_at_most_the_cap(certs: CertificatePaths) -> None:
    assert READ_CAP < MMAP_THRESHOLD  # the point: a read's buffer comes from the heap
    client, server, (_, c_out, s_in, _) = connected(certs)
    assert isinstance(server, CappedReadSSLObject)
    message = bytes(range(256)) * 1024  # 256 KiB: several TLS records
    client.write(message)
    pump(c_out, s_in)
    received = b""
    while True:
        try:
            chunk = server.read(256 * 1024)  # what uvloop asks for
        except ssl.SSLWantReadError:
            break
        assert 0 < len(chunk) <= READ_CAP
        received += chunk
    assert received == message


def test_reads_into_a_buffer_are_unchanged(certs: CertificatePaths) -> None:
    client, server, (_, c_out, s_in, _) = connected(certs)
    client.write(b"x" * 1000)
    pump(c_out, s_in)
    buffer = bytearray(4096)
    assert server.read(4096, buffer) == 1000 and bytes(buffer[:1000]) == b"x" * 1000
