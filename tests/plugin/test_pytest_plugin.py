"""The ``pygateway`` fixture as a user project sees it: each test here writes that project's
test files and runs them in a pytest subprocess (warnings as errors, strict markers), then
checks the outcome and that no process of theirs is left."""

from __future__ import annotations

import contextlib
import http.server
import signal
import socket
import threading
from collections.abc import Iterator

import pytest
from user_project import UserProject, processes_under

from gateway.testing.processes import group_members, wait_exited

pytestmark = pytest.mark.e2e

STARLETTE_APP = """
import os

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

SEEN = []


async def info(request: Request) -> JSONResponse:
    SEEN.append(request.url.path)
    body = await request.body()
    return JSONResponse(
        {"pid": os.getpid(), "scheme": request.url.scheme, "bytes": len(body)}
    )


async def name(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.app.state.name)


def make_app(label: str = "app") -> Starlette:
    app = Starlette(routes=[Route("/info", info, methods=["GET", "POST"]), Route("/name", name)])
    app.state.name = label
    return app
"""


def test_starlette_app_served_over_real_https(project: UserProject) -> None:
    project.write(
        "test_app.py",
        STARLETTE_APP
        + """
import ssl


def test_served_through_the_gateway(pygateway):
    SEEN.clear()
    gw = pygateway(app=make_app())
    assert gw.url.startswith("https://localhost:")
    with gw.client() as client:
        response = client.get("/info")
    assert response.status_code == 200
    # The app runs in this very process (a uvicorn thread) and was reached over HTTPS.
    assert response.json() == {"pid": os.getpid(), "scheme": "https", "bytes": 0}
    assert SEEN == ["/info"]  # the gateway's health checks never reach the app


def test_certificate_verified_against_its_own_ca(pygateway):
    gw = pygateway(app=make_app())
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{gw.url}/info", verify=ssl.create_default_context())
    own_ca = ssl.create_default_context(cafile=gw.ca_file)
    assert httpx.get(f"{gw.url}/info", verify=own_ca).status_code == 200


def test_plain_http_redirects_to_the_https_url(pygateway):
    gw = pygateway(app=make_app())
    response = httpx.get(f"{gw.http_url}/info?a=1")
    assert response.status_code == 308
    assert response.headers["location"] == f"{gw.url}/info?a=1"


def test_config_tables_merge_over_the_defaults(pygateway):
    gw = pygateway(app=make_app(), config={"gateway": {"max_body_bytes": 100}})
    with gw.client() as client:
        assert client.post("/info", content=b"x" * 100).json()["bytes"] == 100
        assert client.post("/info", content=b"x" * 101).status_code == 413
""",
    )
    project.run().assert_outcomes(passed=4)


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the path it saw and the server's token."""

    token = "upstream-token"

    def do_GET(self) -> None:
        body = f"{self.token} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the test reads the answers, not the log


@contextlib.contextmanager
def running_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_upstream_url_of_a_running_server(project: UserProject) -> None:
    with running_server() as url:
        project.write(
            "test_upstream.py",
            f"UPSTREAM = {url!r}\n"
            + """


def test_fronts_a_running_server(pygateway):
    gw = pygateway(upstream=UPSTREAM)
    with gw.client() as client:
        response = client.get("/some/path?q=1")
    assert response.status_code == 200
    assert response.text == "upstream-token /some/path?q=1"


def test_config_alone_names_the_pools(pygateway):
    gw = pygateway(
        config={
            "upstreams": {"api": {"servers": [UPSTREAM], "health_path": "/ping"}},
            "routes": [{"path_prefix": "/api", "upstream": "api", "strip_prefix": True}],
        }
    )
    with gw.client() as client:
        assert client.get("/api/items").text == "upstream-token /items"
        assert client.get("/elsewhere").status_code == 404
""",
        )
        project.run().assert_outcomes(passed=2)


def test_one_gateway_shared_by_a_session_fixture(project: UserProject) -> None:
    """``start_gateway``, the function behind the fixture, in a user's own session fixture."""
    project.write(
        "conftest.py",
        STARLETTE_APP
        + """
from gateway.testing import start_gateway


@pytest.fixture(scope="session")
def shared_gateway(tmp_path_factory):
    with start_gateway(tmp_path_factory.mktemp("gw"), make_app("shared")) as gw:
        yield gw
""",
    )
    project.write(
        "test_shared.py",
        """
import pytest

URLS = set()


@pytest.mark.parametrize("n", [1, 2])
def test_uses_the_shared_gateway(shared_gateway, n):
    URLS.add(shared_gateway.url)
    assert len(URLS) == 1
    with shared_gateway.client() as client:
        assert client.get("/name").text == "shared"
""",
    )
    project.run().assert_outcomes(passed=2)


def test_async_test_with_anyio(project: UserProject) -> None:
    project.write(
        "test_async.py",
        STARLETTE_APP
        + """
@pytest.mark.anyio
async def test_async_client(pygateway):
    gw = pygateway(app=make_app("async"))
    async with gw.async_client() as client:
        response = await client.get("/name")
    assert response.status_code == 200
    assert response.text == "async"
""",
    )
    project.run().assert_outcomes(passed=1)


def test_failing_assertion_fails_the_run_and_shows_the_gateway_output(
    project: UserProject,
) -> None:
    project.write(
        "test_fails.py",
        STARLETTE_APP
        + """
def test_wrong_expectation(pygateway):
    gw = pygateway(app=make_app("real"))
    with gw.client() as client:
        assert client.get("/name").text == "expected something else"
""",
    )
    result = project.run()
    result.assert_outcomes(failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*AssertionError*",
            "*- pygateway https://localhost:* output -*",
            "*gateway ready: https://127.0.0.1:*",
        ]
    )


def test_two_gateways_in_one_test(project: UserProject) -> None:
    project.write(
        "test_two.py",
        STARLETTE_APP
        + """
import ssl


def test_two_gateways(pygateway):
    one = pygateway(app=make_app("one"))
    two = pygateway(app=make_app("two"))
    assert one.url != two.url and one.ca_file != two.ca_file
    with one.client() as c1, two.client() as c2:
        assert c1.get("/name").text == "one"
        assert c2.get("/name").text == "two"
    # Each has its own CA: one's root does not vouch for two's certificate.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{two.url}/name", verify=ssl.create_default_context(cafile=one.ca_file))
    one.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{one.url}/name", verify=one.ssl_context())
    with two.client() as c2:
        assert c2.get("/name").text == "two"
""",
    )
    project.run().assert_outcomes(passed=1)


def test_interrupted_run_leaves_no_process(project: UserProject) -> None:
    """Ctrl-C in the middle of a test: the run stops, and so does its gateway."""
    project.write(
        "test_interrupt.py",
        STARLETTE_APP
        + """
import signal


def test_interrupted(pygateway):
    gw = pygateway(app=make_app(), config={"gateway": {"workers": 2}})
    with gw.client() as client:
        assert client.get("/name").status_code == 200
    # What Ctrl-C in a terminal does. The handler is set first: a run started in the
    # background by a shell without job control (CI, `make test &`) inherits SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.raise_signal(signal.SIGINT)
    raise AssertionError("not reached: SIGINT raised KeyboardInterrupt")
""",
    )
    result = project.run()  # asserts that no process is left
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])


def test_killed_test_process_leaves_no_process(project: UserProject) -> None:
    """SIGKILL (a CI timeout, the OOM killer): no teardown runs, the watchdog stops the group."""
    project.write(
        "test_killed.py",
        STARLETTE_APP
        + """
import signal
from pathlib import Path


def test_killed(pygateway):
    gw = pygateway(app=make_app(), config={"gateway": {"workers": 2}})
    Path("pids").write_text(f"{gw.pid} {gw.process.watchdog.pid}")
    os.kill(os.getpid(), signal.SIGKILL)
""",
    )
    result = project.run(check_processes=False)
    assert result.ret == -signal.SIGKILL
    gateway_pid, watchdog_pid = map(int, (project.path / "pids").read_text().split())
    # The watchdog stops the group (gateway, workers, itself): wait for each, then look.
    wait_exited([gateway_pid, watchdog_pid, *group_members(gateway_pid)], timeout=30)
    assert processes_under(project.path) == []


def test_start_failures_report_the_gateway_output(project: UserProject) -> None:
    busy = socket.create_server(("127.0.0.1", 0))
    with busy:
        port = busy.getsockname()[1]
        project.write(
            "test_start.py",
            STARLETTE_APP
            + f"""
import contextlib

from gateway.testing import GatewayStartError


def test_busy_pinned_port(pygateway):
    with pytest.raises(GatewayStartError) as info:
        pygateway(app=make_app(), config={{"gateway": {{"https_port": {port}}}}})
    assert "exited with code 1" in str(info.value)
    assert "[gateway] https_port = {port}: 127.0.0.1:{port}" in str(info.value)
    assert "already in use" in str(info.value)


def test_config_error(pygateway):
    with pytest.raises(GatewayStartError) as info:
        pygateway(app=make_app(), config={{"gateway": {{"redirect_status": 200}}}})
    assert "[gateway] redirect_status = 200: must be one of" in str(info.value)


@contextlib.asynccontextmanager
async def broken_lifespan(app):
    raise RuntimeError("no database")
    yield


def test_app_whose_startup_fails(pygateway):
    app = make_app()
    app.router.lifespan_context = broken_lifespan
    with pytest.raises(GatewayStartError, match="the ASGI app did not start"):
        pygateway(app=app)
""",
        )
        project.run().assert_outcomes(passed=3)


def test_xdist_workers_start_gateways_without_collisions(project: UserProject) -> None:
    project.write(
        "test_parallel.py",
        STARLETTE_APP
        + """
@pytest.mark.parametrize("n", range(6))
def test_own_gateway(pygateway, n):
    gw = pygateway(app=make_app(f"app-{n}"))
    with gw.client() as client:
        assert client.get("/name").text == f"app-{n}"
    print("gateway port", gw.url.rsplit(":", 1)[1], "worker", os.environ["PYTEST_XDIST_WORKER"])
""",
    )
    result = project.run("-n", "2", "-rP")
    result.assert_outcomes(passed=6)
    workers = {line.split()[-1] for line in result.outlines if line.startswith("gateway port")}
    assert workers == {"gw0", "gw1"}  # both workers started gateways
