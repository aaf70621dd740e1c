"""The HTTPS listener's protocol: HTTP/1.1 or HTTP/2, chosen per connection by ALPN.

asyncio calls ``connection_made`` once the TLS handshake is done, so the protocol the client
and the server agreed on is known there.  A connection that negotiated ``h2`` hands its
transport to an ``H2Protocol``; every other one (``http/1.1``, or a client that offered no
ALPN at all) stays this very object, the listener's httptools protocol, so the HTTP/1.1 path
costs one ``selected_alpn_protocol()`` call per connection and nothing per request.
"""

from __future__ import annotations

import asyncio

from gateway.http2.limits import Http2Limits
from gateway.http2.protocol import H2Protocol
from gateway.listener import GatewayHttpToolsProtocol, transport_addresses


class ALPNDispatchProtocol(GatewayHttpToolsProtocol):
    http2_limits = Http2Limits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            super().connection_made(transport)
            return
        if len(self.server_state.connections) >= self.limits.max_connections:
            transport.close()  # max_connections (gateway.client_limits); h1 gets a 503 instead
            return
        server, client = transport_addresses(transport)
        protocol = H2Protocol(
            self.app,
            self.http2_limits,
            self.server_state,
            self.app_state,
            self.loop,
            server=server,  # type: ignore[arg-type]
            client=client,
            root_path=self.root_path,
            # The TLS server name and the names of the certificate served (both recorded by
            # the SNI callback), for validation's 421: browsers reuse an h2 connection for
            # every name its certificate covers, and a 421 is how they learn to open another
            # one (RFC 9113 §9.1.2).
            sni=getattr(ssl_object, "gateway_sni", None),
            cert_names=getattr(ssl_object, "gateway_cert_names", None),
        )
        if self.trace:  # gateway.tracing: each stream's scope gets a Trace
            protocol.start_tracing(ssl_object)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
