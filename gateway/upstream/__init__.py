"""The upstream side of the proxy: pooled keep-alive HTTP/1.1 connections to backend servers.

``parsers`` turns response bytes into events (httptools when installed, h11 otherwise, chosen
like uvicorn's "auto"), ``connection`` moves bytes for one TCP connection, ``pool`` keeps idle
connections per server and decides when one may be reused.
"""
