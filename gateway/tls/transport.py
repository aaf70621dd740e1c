"""The HTTPS listener's TLS: OpenSSL reads and writes each connection's socket itself, as in nginx.

uvloop's TLS transport, like asyncio's, runs OpenSSL over memory BIOs: a record is received
into a buffer, copied into the incoming BIO and decrypted out of it; a response is encrypted
into the outgoing BIO, copied out of it and sent, with Python-level steps in between.  Here
each connection's SSL object is bound to its socket (``SSLContext._wrap_socket``, the C object
``ssl.SSLSocket`` is built on, stable since Python 3.7): ``read`` is a ``recv`` and a decrypt,
``write`` an encrypt and a ``send``, both in C, and the event loop only says when the socket
is ready (``add_reader`` / ``add_writer``).  Measured one process each (``bench/layers.py``'s
harness, ``wrk -t1 -c32``): a new connection, handshake and one request, 583 -> 462 µs of
CPU against nginx's 423; a kept-alive small request 20.2 -> 18.6 µs (bench/README.md,
"Session 10").

What a protocol sees is asyncio's transport: ``connection_made`` once the handshake is done
(ALPN and SNI known), ``data_received``, ``eof_received``, ``pause_writing`` and
``resume_writing`` around a 64 KiB write buffer, ``connection_lost`` soon after the close.

- The handshake runs under ``handshake_timeout`` (``header_timeout``, as nginx's
  ``client_header_timeout`` covers it); a failed one is logged at debug level and closed.
- A plain HTTP request on the TLS port (OpenSSL recognises its method) gets a 400 in plain
  HTTP that says so, as from nginx, rather than a reset.
- A read asks for one record's worth (16 KiB): OpenSSL reads exactly one record from the
  socket, so the rest stays in the kernel and the loop reports it again (level-triggered).
- A write of more than one record is corked (``TCP_CORK``): OpenSSL sends each 16 KiB record
  with its own ``send``, and uncorked they would leave as that many pushes.
- ``pause_reading`` only raises a flag; the poll stops when the socket turns readable while
  paused, so a pause and resume with nothing arriving in between costs no system call.
- Closing sends close_notify and a FIN once the buffer is out, then reads (and drops) what
  the client still sends until it closes too, for at most ``LINGER`` seconds: a socket closed
  with unread bytes sends a reset, which can destroy the response the client has not read
  yet (nginx's ``lingering_close``).  A client that has closed already (the usual end of a
  ``Connection: close`` exchange) costs no linger: its close is read at once.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gateway.tls")

READ_SIZE = 16 * 1024  # a TLS record's largest plaintext
HIGH_WATER = 64 * 1024  # asyncio's default write-buffer limits
LOW_WATER = 16 * 1024
LINGER = 5.0  # nginx's lingering_timeout
DRAIN_READS = 16  # reads of a lingering close per wake-up: 1 MiB
ACCEPT_BATCH = 64  # connections accepted per readiness of the listening socket
ACCEPT_RETRY = 1.0  # seconds without accepting after running out of descriptors or memory

_WantRead = ssl.SSLWantReadError
_WantWrite = ssl.SSLWantWriteError
_EOF = (ssl.SSLZeroReturnError, ssl.SSLEOFError)
_TRY_AGAIN = (BlockingIOError, InterruptedError)
_CORK: int | None = getattr(socket, "TCP_CORK", None)  # Linux
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_DISCARD = bytearray(64 * 1024)  # what a lingering close reads into
_PLAIN_HTTP_MESSAGE = b"This port speaks HTTPS: the plain HTTP request was sent to an HTTPS port.\n"
PLAIN_HTTP_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n"
    % len(_PLAIN_HTTP_MESSAGE)
    + _PLAIN_HTTP_MESSAGE
)


class TLSServer(asyncio.AbstractServer):
    """Accepts TLS connections on a bound socket: the part of what ``loop.create_server(ssl=)``
    returns that uvicorn uses (``close``, ``wait_closed``)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.Protocol],
        sock: socket.socket,
        context: ssl.SSLContext,
        handshake_timeout: float | None,
        backlog: int = 2048,
    ) -> None:
        self.loop = loop
        self.protocol_factory = protocol_factory
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.sock = sock
        sock.setblocking(False)
        sock.listen(backlog)
        self._fd = sock.fileno()
        sockname = sock.getsockname()
        # Bound to one address, every connection's local address is that one: no
        # getsockname per connection.
        self.sockname: Any = None if ipaddress.ip_address(sockname[0]).is_unspecified else sockname
        self.sockets = [sock]
        self._serving = True
        # What ``socket.accept`` looks up again per connection (its family and type are
        # properties that build enums).
        self._kind = (int(sock.family), int(sock.type), sock.proto)
        loop.add_reader(self._fd, self._accept)

    def _accept(self) -> None:
        listener = self.sock
        family, kind, proto = self._kind
        for _ in range(ACCEPT_BATCH):
            try:
                fd, address = listener._accept()  # type: ignore[attr-defined]
            except _TRY_AGAIN:
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    # The listener stays readable: stop accepting for a second rather than
                    # spin on it (asyncio does the same).
                    log.error(
                        "accepting a TLS connection failed: %s; again in %g s", exc, ACCEPT_RETRY
                    )
                    self.loop.remove_reader(self._fd)
                    self.loop.call_later(ACCEPT_RETRY, self._resume_accepting)
                    return
                continue  # that client left before its accept (ECONNABORTED)
            try:
                conn = socket.socket(family, kind, proto, fileno=fd)
            except OSError as exc:
                log.debug("TLS connection from %s dropped at accept: %s", address, exc)
                os.close(fd)
                continue
            try:
                TLSTransport(self, conn, address)
            except OSError as exc:  # gone already (setsockopt on a reset socket)
                log.debug("TLS connection from %s dropped at accept: %s", address, exc)
                conn.close()

    def _resume_accepting(self) -> None:
        if self._serving:
            self.loop.add_reader(self._fd, self._accept)

    def close(self) -> None:
        """Stop accepting and close the listening socket; connections stay open (asyncio's
        ``Server.close``)."""
        if not self._serving:
            return
        self._serving = False
        self.loop.remove_reader(self._fd)
        self.sock.close()
        self.sockets = []

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        pass  # serving from the start

    async def serve_forever(self) -> None:
        await asyncio.Future()  # until cancelled, as asyncio's

    async def wait_closed(self) -> None:
        pass  # connections are the protocols' (uvicorn waits for them)


class TLSTransport(asyncio.Transport):
    """One accepted TLS connection; see the module docstring."""

    _protocol: asyncio.Protocol | None = None
    _timer: asyncio.TimerHandle | None = None

    def __init__(self, server: TLSServer, sock: socket.socket, peername: Any) -> None:
        # asyncio.BaseTransport's __init__ only keeps ``extra``: get_extra_info is ours.
        self._server = server
        self._loop = loop = server.loop
        self._sock = sock
        self._fd = sock.fileno()
        self._peername = peername
        self._sockname = server.sockname
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # What ``get_extra_info("ssl_object")`` and the context's SNI callback get: a real
        # SSLObject over the socket-bound SSL object (its methods all go to ``_sslobj``).
        owner = ssl.SSLObject.__new__(ssl.SSLObject)
        self._ssl = server.context._wrap_socket(  # type: ignore[attr-defined]
            sock, True, None, owner=owner
        )
        owner._sslobj = self._ssl  # type: ignore[attr-defined]
        self.ssl_object = owner
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._high = HIGH_WATER
        self._low = LOW_WATER
        self._writing_paused = False  # the protocol's pause_writing was called
        self._reading = True  # what the protocol asked for
        self._polling = True  # whether the loop watches the socket for reading
        self._read_wants_write = False
        self._writer_on = False
        self._closing = False
        self._closed = False
        self._lost = False
        if server.handshake_timeout:
            self._timer = loop.call_later(server.handshake_timeout, self._handshake_timed_out)
        loop.add_reader(self._fd, self._handshake)

    # -- the handshake -------------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except _WantRead:
            return
        except _WantWrite:  # the send buffer is full mid-flight: wait for room
            self._loop.remove_reader(self._fd)
            self._writer_on = True
            self._loop.add_writer(self._fd, self._handshake_writable)
            return
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.debug("TLS handshake with %s failed: %s", self._peername, exc)
            if getattr(exc, "reason", None) == "HTTP_REQUEST":
                self._refuse_plain_http()
            else:
                self._close_socket()
            return
        self._cancel_timer()  # the handshake's
        self._loop.add_reader(self._fd, self._read)
        protocol = self._server.protocol_factory()
        self._protocol = protocol
        try:
            protocol.connection_made(self)
        except Exception as exc:
            log.exception("connection_made failed for %s", self._peername)
            self._fatal(exc)

    def _refuse_plain_http(self) -> None:
        """An HTTP request instead of a ClientHello (OpenSSL recognises the method): say so
        in plain HTTP, as nginx does, rather than reset a developer's ``http://`` request."""
        self._closing = True
        try:
            self._sock.send(PLAIN_HTTP_RESPONSE)
        except OSError:
            self._close_socket()
            return
        self._linger()

    def _handshake_writable(self) -> None:
        self._writer_on = False
        self._loop.remove_writer(self._fd)
        self._loop.add_reader(self._fd, self._handshake)
        self._handshake()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        log.debug("TLS handshake with %s timed out", self._peername)
        self._close_socket()

    # -- reading -------------------------------------------------------------------------------

    def _read(self) -> None:
        if not self._reading:
            self._stop_polling()  # paused since the last read, and more has come
            return
        ssl_object = self._ssl
        while True:
            try:
                data = ssl_object.read(READ_SIZE)
            except _WantRead:
                return
            except _WantWrite:  # a post-handshake message to answer and no room to send it
                self._read_wants_write = True
                self._stop_polling()
                self._watch_writable()
                return
            except _EOF:
                data = b""
            except (OSError, ValueError) as exc:
                self._fatal(exc)
                return
            if not data:
                self._eof()
                return
            try:
                self._protocol.data_received(data)  # type: ignore[union-attr]
            except Exception as exc:
                log.exception("data_received failed for %s", self._peername)
                self._fatal(exc)
                return
            if not (self._reading and ssl_object.pending()):
                return

    def _eof(self) -> None:
        self._stop_polling()
        self._reading = False
        assert self._protocol is not None
        try:
            self._protocol.eof_received()  # True has no effect over TLS (asyncio: the same)
        except Exception as exc:
            log.exception("eof_received failed for %s", self._peername)
            self._fatal(exc)
            return
        self.close()

    def _stop_polling(self) -> None:
        if self._polling:
            self._polling = False
            self._loop.remove_reader(self._fd)

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if self._reading or self._closing:
            return
        self._reading = True
        if not self._polling:
            self._polling = True
            self._loop.add_reader(self._fd, self._read)
        if self._ssl.pending():  # decrypted already: the socket will not say so
            self._loop.call_soon(self._read)

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- writing -------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if self._buffer:
            self._buffer.append(bytes(data))
            self._buffered += len(data)
            self._maybe_pause_protocol()
            return
        sent = self._send(data)
        if sent < 0 or sent == len(data):
            return
        rest = bytes(memoryview(data)[sent:])
        self._buffer.append(rest)
        self._buffered = len(rest)
        self._watch_writable()
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt and send as much of ``data`` as the socket takes: the bytes taken, or -1
        when the connection failed (and is closed)."""
        size = len(data)
        sock = self._sock
        cork = size > READ_SIZE and _CORK is not None
        sent = 0
        try:
            if cork:
                sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)  # type: ignore[arg-type]
            try:
                sent = self._ssl.write(data)
                while sent < size:
                    sent += self._ssl.write(memoryview(data)[sent:])
            except (_WantWrite, _WantRead):
                pass  # a retry must repeat the same bytes: the buffer starts with them
            finally:
                if cork:
                    sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)  # type: ignore[arg-type]
        except (OSError, ValueError) as exc:
            self._fatal(exc)
            return -1
        return sent

    def _watch_writable(self) -> None:
        if not self._writer_on:
            self._writer_on = True
            self._loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        buffer = self._buffer
        if buffer:
            data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
            sent = self._send(data)
            if sent < 0:
                return
            if sent < len(data):
                self._buffer = [data[sent:]]
                self._buffered = len(data) - sent
                self._maybe_resume_protocol()
                return
            self._buffer = []
            self._buffered = 0
        self._writer_on = False
        self._loop.remove_writer(self._fd)
        if self._read_wants_write:
            self._read_wants_write = False
            if not self._closing:
                self._polling = True
                self._loop.add_reader(self._fd, self._read)
                self._read()
        self._maybe_resume_protocol()
        if self._closing and not self._buffer and not self._closed:
            self._shut()

    def _maybe_pause_protocol(self) -> None:
        if self._buffered > self._high and not self._writing_paused:
            self._writing_paused = True
            self._flow_event("pause_writing")

    def _maybe_resume_protocol(self) -> None:
        if self._writing_paused and self._buffered <= self._low:
            self._writing_paused = False
            self._flow_event("resume_writing")

    def _flow_event(self, name: str) -> None:
        """The protocol's ``pause_writing`` or ``resume_writing``; a failure is logged (as
        asyncio does), the connection goes on."""
        try:
            getattr(self._protocol, name)()
        except Exception:
            log.exception("%s failed for %s", name, self._peername)

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def can_write_eof(self) -> bool:
        return False  # TLS has close_notify, not a half-close

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot be half-closed")

    # -- closing -------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is buffered, then close (see ``_shut``); connection_lost follows."""
        if self._closing:
            return
        self._closing = True
        self._reading = False
        if self._buffer:
            self._stop_polling()  # no more reads; ``_writable`` shuts once the rest is out
        elif not self._closed:
            self._shut()  # still polling: the linger takes the poll over, no system call

    def abort(self) -> None:
        """Close now, dropping what is buffered; connection_lost follows."""
        self._drop(None)

    def _shut(self) -> None:
        """Everything is sent: close_notify, a FIN, connection_lost; then read until the
        client closes too, or LINGER seconds."""
        try:
            self._ssl.shutdown()  # sends close_notify; the client's is not waited for
        except (OSError, ValueError):  # SSLWantReadError for that, or the socket failed
            pass
        self._call_lost(None)
        self._linger()

    def _cancel_timer(self) -> None:
        """The connection has one timer at a time: the handshake's, then the linger's."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _linger(self) -> None:
        """A FIN, then read until the client closes too, or LINGER seconds.

        A client that read its response has often closed already (its close_notify and FIN,
        or a reset, are in the socket): then the socket closes at once, with no poll and no
        timer."""
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_socket()
            return
        self._drain()
        if self._closed:
            return
        self._cancel_timer()
        # Replaces the read callback when still polling (uvloop: no system call).
        self._polling = True
        self._loop.add_reader(self._fd, self._drain)
        self._timer = self._loop.call_later(LINGER, self._close_socket)

    def _drain(self) -> None:
        """Read and drop until the socket has nothing more (then wait) or is done (then
        close).  Until nothing more, not one read per wake-up: on an error event (a reset)
        uvloop runs the callback once and stops polling the socket.  At most DRAIN_READS
        reads per wake-up, though: a client sending on as fast as loopback carries must not
        hold the event loop (nor keep the linger's timer from firing)."""
        sock = self._sock
        try:
            for _ in range(DRAIN_READS):
                if not sock.recv_into(_DISCARD):
                    break
            else:
                return  # more to come: the next wake-up reads on
        except _TRY_AGAIN:
            return
        except OSError:
            pass
        self._close_socket()

    def _fatal(self, exc: Exception) -> None:
        log.debug("TLS connection with %s failed: %r", self._peername, exc)
        self._drop(exc)

    def _drop(self, exc: Exception | None) -> None:
        """Close the socket now, buffer and all; connection_lost(exc) follows."""
        self._closing = True
        self._reading = False
        self._buffer = []
        self._buffered = 0
        self._close_socket()
        self._call_lost(exc)

    def _close_socket(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = True
        loop = self._loop
        if self._polling:
            self._polling = False
            loop.remove_reader(self._fd)
        if self._writer_on:
            self._writer_on = False
            loop.remove_writer(self._fd)
        self._cancel_timer()
        self._sock.close()

    def _call_lost(self, exc: Exception | None) -> None:
        if self._protocol is None or self._lost:
            return
        self._lost = True
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)  # type: ignore[union-attr]
        finally:
            # No cycle left for the garbage collector (asyncio's transports do the same).
            self._protocol = None

    # -- the rest of asyncio.Transport ---------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.ssl_object
        if name == "sslcontext":
            return self._ssl.context
        if name == "peername":
            return self._peername
        if name == "sockname":
            if self._sockname is None:
                try:
                    self._sockname = self._sock.getsockname()
                except OSError:
                    return default
            return self._sockname
        if name == "socket":
            return None if self._closed else self._sock
        if name == "peercert":
            return self.ssl_object.getpeercert()
        if name == "cipher":
            return self.ssl_object.cipher()
        if name == "compression":
            return self.ssl_object.compression()
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[return-value]
