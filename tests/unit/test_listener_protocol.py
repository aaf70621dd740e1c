"""The listener's protocol object: built without uvicorn's per-connection look-ups, yet with
everything uvicorn's own ``__init__`` sets, and the scope's addresses from the transport."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.memory_listener import MemoryGateway, json_response
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.listener import transport_addresses


def test_the_protocol_has_every_attribute_uvicorns_init_sets() -> None:
    """``GatewayHttpToolsProtocol.__init__`` replaces uvicorn's: a uvicorn release that sets
    one more attribute (which its methods would then use) fails here, not in production."""
    gw = MemoryGateway(
        {
            "gateway": {"hostnames": ["localhost"]},
            "upstreams": {"app": {"servers": ["http://127.0.0.1:9"]}},
            "routes": [{"path_prefix": "/", "upstream": "app"}],
        },
        json_response(b"{}"),
    )

    async def main() -> None:
        await gw.start()
        ours = type(gw.protocol)(
            config=gw.protocol.config, server_state=gw.protocol.server_state, app_state={}
        )
        theirs = HttpToolsProtocol(
            config=gw.protocol.config, server_state=gw.protocol.server_state, app_state={}
        )
        assert set(vars(theirs)) <= set(vars(ours))
        for name in ("logger", "access_logger", "access_log", "app", "root_path", "tasks"):
            assert getattr(ours, name) == getattr(theirs, name), name

    asyncio.run(main())


class Extra(asyncio.Transport):
    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info)


@pytest.mark.parametrize(
    ("sockname", "peername", "server", "client"),
    [
        (("127.0.0.1", 8443), ("127.0.0.1", 51000), ("127.0.0.1", 8443), ("127.0.0.1", 51000)),
        (("::1", 8443, 0, 0), ("::1", 51000, 0, 0), ("::1", 8443), ("::1", 51000)),
        ("/run/gw.sock", "", ("/run/gw.sock", None), None),
        (None, None, None, None),
    ],
    ids=["ipv4", "ipv6", "unix", "unknown"],
)
def test_addresses_come_from_the_transport_as_uvicorn_makes_them(
    sockname: Any, peername: Any, server: Any, client: Any
) -> None:
    """uvicorn's get_local_addr/get_remote_addr, from ``sockname``/``peername`` (no socket
    calls): IPv6's four-tuples become (host, port), a unix socket has no client port."""
    transport = Extra({"sockname": sockname, "peername": peername})
    assert transport_addresses(transport) == (server, client)
