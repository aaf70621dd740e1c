"""uvicorn's HTTP/1.1 protocol, adjusted for a proxy: keep the raw request target.

uvicorn reduces an absolute-form target (``GET http://host/path``) to its path, but RFC 9112
§3.2.2 says that target's authority, not Host, names the resource.  We keep the raw target in
the scope (``gateway.target``) so ``validation.check_request`` can refuse hosts we do not
serve instead of silently proxying them.  Chosen like uvicorn's "auto": httptools when
installed, else h11 (whose scope already carries the full target in ``raw_path``).
"""

from __future__ import annotations

import asyncio

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools not installed
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


def http_protocol_class() -> type[asyncio.Protocol] | str:
    if HttpToolsProtocol is None:
        return "h11"
    return GatewayHttpToolsProtocol


if HttpToolsProtocol is not None:

    class GatewayHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
        def on_headers_complete(self) -> None:
            if self.url[:1] != b"/":
                self.scope["gateway.target"] = bytes(self.url)
            super().on_headers_complete()
