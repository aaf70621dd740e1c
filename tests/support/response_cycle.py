"""The listener's response writer (``gateway.http1_cycle.GatewayCycle``) on any transport, as
uvicorn's protocol would build it, for tests without sockets."""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.flow_control import FlowControl

from gateway.http1_cycle import GatewayCycle


def response_cycle(
    transport: asyncio.Transport,
    method: str = "GET",
    *,
    http10: bool = False,
    keep_alive: bool = True,
    default_headers: list[tuple[bytes, bytes]] | None = None,
    completed: list[bool] | None = None,
) -> GatewayCycle:
    """A cycle for one ``method`` request; ``completed`` gets True when the response ends.
    ``default_headers``: uvicorn's server-wide fields (the TLS listener has none)."""
    cycle = GatewayCycle(
        scope={"method": method},  # type: ignore[arg-type]
        transport=transport,
        flow=FlowControl(transport),
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=default_headers or [],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive and not http10,
        on_response=lambda: completed.append(True) if completed is not None else None,
    )
    cycle.interim = not http10
    cycle.http10 = http10
    return cycle
