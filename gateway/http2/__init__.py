"""HTTP/2 on the HTTPS listener: ALPN dispatch, the h2 connection protocol, its limits.

``dispatch.py`` picks HTTP/1.1 or HTTP/2 per connection after the TLS handshake;
``protocol.py`` runs an h2 connection, one ASGI task per stream through the same
``GatewayApp``; ``request.py`` turns a header block into that app's scope (pure);
``limits.py`` holds the per-connection bounds and the rapid-reset budget (pure).
"""
