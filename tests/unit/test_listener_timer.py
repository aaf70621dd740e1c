"""The HTTP/1.1 listener's one timer per connection (``GatewayHttpToolsProtocol._arm``), over
in-memory transports: the keep-alive wait, the request head's and body's deadlines, and that a
busy kept-alive connection does not arm a timer per request."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from support.memory_listener import MemoryGateway, json_response

from gateway.client_limits import Phase

GET = b"GET /status HTTP/1.1\r\nhost: localhost\r\n\r\n"


def run(test: Callable[[MemoryGateway], Awaitable[None]], **gateway: Any) -> None:
    config = {
        "gateway": {"hostnames": ["localhost"], **gateway},
        "upstreams": {"app": {"servers": ["http://127.0.0.1:9"]}},
        "routes": [{"path_prefix": "/", "upstream": "app", "cache": False}],
    }
    gw = MemoryGateway(config, json_response(b'{"ok":true}'))

    async def main() -> None:
        await gw.start()
        await asyncio.wait_for(test(gw), 5)

    asyncio.run(main())


async def closed(gw: MemoryGateway) -> float:
    """Wait until the gateway closes the client's connection; when (loop time)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    close = gw.client.close

    def on_close() -> None:
        close()
        if not done.done():
            done.set_result(loop.time())

    gw.client.close = on_close  # type: ignore[method-assign]
    return await done


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout() -> None:
    async def test(gw: MemoryGateway) -> None:
        gw.protocol.timeout_keep_alive = 0.05
        gw.send(GET)
        assert (await gw.response()).startswith(b"HTTP/1.1 200")
        assert gw.protocol._phase is Phase.IDLE
        answered = asyncio.get_running_loop().time()
        when = await closed(gw)
        assert 0.04 <= when - answered < 1.0
        assert gw.client.data == b""  # closed without a word, as uvicorn's keep-alive close

    run(test)


def test_a_request_head_begun_while_idle_gets_the_whole_header_timeout() -> None:
    async def test(gw: MemoryGateway) -> None:
        gw.protocol.timeout_keep_alive = 0.05
        gw.send(GET)
        await gw.response()
        began = asyncio.get_running_loop().time()
        gw.send(b"GET /status HTTP/1.1\r\nhost: loc")  # the head, cut short
        assert gw.protocol._phase is Phase.HEAD
        when = await closed(gw)
        # Not the keep-alive wait (0.05 s) that was armed before: the head's own 0.3 s.
        assert when - began >= 0.25
        assert gw.client.data.startswith(b"HTTP/1.1 408")

    run(test, header_timeout=0.3)


def test_a_busy_connection_arms_a_timer_per_timeout_not_per_request() -> None:
    async def test(gw: MemoryGateway) -> None:
        loop = asyncio.get_running_loop()
        armed: list[float] = []
        call_at = loop.call_at

        def counting_call_at(
            when: float, callback: Any, *args: Any, **kwargs: Any
        ) -> asyncio.TimerHandle:
            if getattr(callback, "__name__", "") == "_expire":
                armed.append(when)
            return call_at(when, callback, *args, **kwargs)

        loop.call_at = counting_call_at  # type: ignore[method-assign]
        for _ in range(50):
            gw.send(GET)
            assert (await gw.response()).startswith(b"HTTP/1.1 200")
        # The head's deadline at the first bytes, then the (earlier) keep-alive one: no more.
        assert len(armed) <= 2
        assert gw.protocol._phase is Phase.IDLE and gw.protocol._timer is not None

    run(test)


def test_an_expired_handle_sleeps_again_until_the_moved_deadline() -> None:
    async def test(gw: MemoryGateway) -> None:
        protocol = gw.protocol
        protocol.timeout_keep_alive = 0.1
        gw.send(GET)
        await gw.response()
        first = protocol._timer
        assert first is not None
        protocol._deadline += 0.1  # as if a request had come and gone meanwhile
        moved = protocol._deadline
        when = await closed(gw)
        assert when >= moved - 0.01
        assert protocol._timer is not first

    run(test)
