"""``headers``: set or remove request fields (what the upstream sees) and response fields
(what the client sees), like Traefik's ``customRequestHeaders``/``customResponseHeaders``.

A set replaces every field of that name; removals apply first.  Hop-by-hop and framing
fields, and the ones the proxy writes itself (Host, X-Forwarded-*, X-Request-ID) are refused
by the config: a rule for them would break framing or never take effect.
"""

from __future__ import annotations

import dataclasses

from gateway.asgi import Message
from gateway.config import MiddlewareSettings, Settings
from gateway.headers import Headers
from gateway.request import Handler, Request


@dataclasses.dataclass(frozen=True, slots=True)
class HeaderRule:
    """Fields to drop (lowercase names) and fields to put in their place."""

    remove: frozenset[bytes] = frozenset()
    set: tuple[tuple[bytes, bytes], ...] = ()

    @classmethod
    def from_options(
        cls, set_: dict[str, str] | None, remove: tuple[str, ...] | None
    ) -> HeaderRule:
        pairs = tuple((k.lower().encode(), v.encode()) for k, v in (set_ or {}).items())
        names = {name.lower().encode() for name in remove or ()}
        return cls(frozenset(names | {name for name, _ in pairs}), pairs)

    def __bool__(self) -> bool:
        return bool(self.remove)

    def apply(self, headers: Headers) -> Headers:
        """A new list: ``headers`` without the removed names, plus the set ones."""
        remove = self.remove
        out = [pair for pair in headers if pair[0] not in remove]
        out.extend(self.set)
        return out


class HeaderRules:
    applies_to_websocket = True  # request rules reach the handshake; the 101 is relayed as is

    def __init__(self, config: MiddlewareSettings, settings: Settings) -> None:
        options = config.options
        self.request = HeaderRule.from_options(
            options.get("request_set"), options.get("request_remove")
        )
        self.response = HeaderRule.from_options(
            options.get("response_set"), options.get("response_remove")
        )

    def wrap(self, handler: Handler) -> Handler:
        request_rule, response_rule = self.request, self.response

        async def with_header_rules(request: Request) -> None:
            if request_rule:
                scope = dict(request.scope)
                scope["headers"] = request_rule.apply(scope["headers"])
                request = dataclasses.replace(request, scope=scope)
            if response_rule:
                send = request.send

                async def send_with_rules(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        message = {**message, "headers": response_rule.apply(message["headers"])}
                    await send(message)

                request = dataclasses.replace(request, send=send_with_rules)
            await handler(request)

        return with_header_rules
