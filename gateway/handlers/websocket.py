"""WebSocket tunnel (being written)."""

from __future__ import annotations

from gateway.asgi import Scope


def is_websocket_upgrade(scope: Scope) -> bool:
    return False


class WebSocketHandler:
    def __init__(self, *args: object) -> None:
        pass
