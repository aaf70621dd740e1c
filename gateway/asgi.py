"""The ASGI types the gateway's raw-ASGI code passes around (no Starlette on the hot path)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# An interim 1xx response (103 Early Hints) relayed before ``http.response.start``:
# ``{"type": INTERIM, "status": 103, "headers": [...]}``.  Not in the ASGI spec: the gateway's
# listener writes it (``INTERIM_SCOPE_KEY`` in the scope says it can), nothing else sees it.
INTERIM = "gateway.response.interim"
INTERIM_SCOPE_KEY = "gateway.interim"
