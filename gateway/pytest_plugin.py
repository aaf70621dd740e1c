"""The ``pygateway`` pytest plugin (entry point ``pytest11``): real HTTPS in front of any app.

    def test_home(pygateway):
        gw = pygateway(app=app)          # or upstream="http://127.0.0.1:9000", config={...}
        with gw.client() as client:      # httpx, base_url=gw.url, trusting only gw.ca_file
            assert client.get("/").status_code == 200

Each call starts one gateway process (see ``gateway.testing``) with its files in the test's
``tmp_path``; all of them are stopped when the test ends, passed, failed or interrupted.  When a
test fails, each gateway's output is added to the report, next to the captured output.

Loading the plugin costs nothing: the gateway's modules are imported by the first call.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from gateway.testing import ASGIApp, RunningGateway

_GATEWAYS = pytest.StashKey[list["RunningGateway"]]()


class GatewayFactory(Protocol):
    def __call__(
        self,
        app: ASGIApp | None = None,
        *,
        upstream: str | None = None,
        config: dict[str, Any] | None = None,
        start_timeout: float = ...,
    ) -> RunningGateway: ...


@pytest.fixture
def pygateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayFactory]:
    """Factory: ``pygateway(app=ASGI_APP)``, ``pygateway(upstream=URL)``, ``config={...}``;
    returns a started gateway (``url``, ``http_url``, ``ca_file``, ``client()``,
    ``async_client()``, ``stop()``)."""
    from gateway.testing.running import START_TIMEOUT, start_gateway

    started: list[RunningGateway] = []
    request.node.stash[_GATEWAYS] = started

    def factory(
        app: ASGIApp | None = None,
        *,
        upstream: str | None = None,
        config: dict[str, Any] | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> RunningGateway:
        directory = tmp_path / f"pygateway-{len(started) + 1}"
        gateway = start_gateway(
            directory, app, upstream=upstream, config=config, start_timeout=start_timeout
        )
        started.append(gateway)
        return gateway

    try:
        yield factory
    finally:
        for gateway in reversed(started):
            gateway.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    for gateway in item.stash.get(_GATEWAYS, []):
        report.sections.append((f"pygateway {gateway.url} output", gateway.output()))
