"""Fixtures that start the real gateway and echo upstreams (see ``harness``).

``shared`` is one stack for the whole session, used by tests that only read: three echo
upstreams ``a``, ``b``, ``c`` behind three pools.  Tests that need a special config or that
stop processes build their own stack with ``harness.stack``.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from e2e.harness import SHARED_MAX_BODY, EchoUpstream, Gateway, Stack, StackConfig, stack


def shared_config(upstreams: dict[str, EchoUpstream]) -> StackConfig:
    """``/`` -> pool main (a, b); ``/trio/...`` -> pool trio (a, b, c) and ``/solo/...`` ->
    pool solo (c), both with the prefix stripped; ``/streamed/...`` -> pool solo without
    request buffering."""
    a, b, c = (upstreams[name].url for name in "abc")
    return StackConfig(
        pools={"main": [a, b], "trio": [a, b, c], "solo": [c]},
        routes=[
            {"path_prefix": "/", "upstream": "main"},
            {"path_prefix": "/trio", "upstream": "trio", "strip_prefix": True},
            {"path_prefix": "/solo", "upstream": "solo", "strip_prefix": True},
            {
                "path_prefix": "/streamed",
                "upstream": "solo",
                "strip_prefix": True,
                "request_buffering": False,
            },
        ],
        gateway={"max_body_bytes": SHARED_MAX_BODY},
    )


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(tmp_path_factory.mktemp("shared"), ["a", "b", "c"], shared_config) as s:
        yield s


@pytest.fixture(scope="session")
def gw(shared: Stack) -> Gateway:
    return shared.gateway


@pytest.fixture
def client(gw: Gateway) -> Iterator[httpx.Client]:
    with gw.client() as c:
        yield c
