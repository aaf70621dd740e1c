"""The admin Starlette app in-process over a fake source: every endpoint's shape, the 422 of
an invalid reload, the purge's prefix check, basic auth, and the merge of several workers'
descriptions into one answer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from gateway.admin.api import build_app
from gateway.admin.metrics import Metrics
from gateway.admin.state import merge_views
from gateway.config import parse_settings
from gateway.runtime.reload import ReloadError

SETTINGS = parse_settings(
    {
        "upstreams": {"app": {"servers": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]}},
        "routes": [
            {"path_prefix": "/", "upstream": "app", "hosts": ["localhost"]},
            {"path_prefix": "/old", "redirect": "https://example.org"},
        ],
    },
    Path("/srv/gw/config.toml"),
)


def server(url: str, state: str, in_flight: int = 0, failures: int = 0) -> dict[str, Any]:
    return {
        "url": url,
        "state": state,
        "last_check": "2026-12-06T20:00:00.000+00:00",
        "last_change": None,
        "last_error": None if state == "UP" else "connection refused",
        "failures": failures,
        "in_flight": in_flight,
        "connections_opened": 1,
    }


def process(pid: int, worker: int, states: tuple[str, str], requests: int) -> dict[str, Any]:
    metrics = Metrics().snapshot()
    metrics["requests"] = [["localhost/", "app", 200, requests]]
    metrics["buckets"][3] = requests
    metrics["cache"] = {"HIT": 2, "MISS": 1}
    return {
        "pid": pid,
        "worker": worker,
        "generation": 0,
        "upstreams": [
            {
                "name": "app",
                "servers": [
                    server("http://127.0.0.1:9001", states[0], in_flight=1),
                    server("http://127.0.0.1:9002", states[1], failures=worker + 1),
                ],
            }
        ],
        "certificates": [
            {
                "names": ["localhost", "127.0.0.1"],
                "not_after": "2027-03-06T00:00:00Z",
                "not_after_epoch": 1804204800.0,
                "issuer": "CN=pygateway local CA",
                "source": "local",
            }
        ],
        "cache": {"enabled": True, "entries": 3, "bytes": 300, "max_bytes": 1000},
        "connections": 2,
        "metrics": metrics,
    }


class FakeSource:
    def __init__(self, processes: list[dict[str, Any]]) -> None:
        self.processes = processes
        self.purged: list[str] = []
        self.reload_errors: list[str] = []

    async def view(self) -> dict[str, Any]:
        return merge_views(self.processes, SETTINGS)

    async def purge(self, prefix: str) -> int:
        self.purged.append(prefix)
        return 4

    async def reload(self) -> list[str]:
        if self.reload_errors:
            raise ReloadError(self.reload_errors)
        return []


class AdminClient(contextlib.AbstractContextManager["AdminClient"]):
    """Synchronous requests to the app in-process (httpx's ASGI transport)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def __exit__(self, *exc: object) -> None:
        return None

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="https://admin") as c:
                response = await c.request(method, path, **kw)
                await response.aread()
                return response

        return asyncio.run(send())

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", path, **kw)


@pytest.fixture
def source() -> FakeSource:
    return FakeSource([process(10, 0, ("UP", "DOWN"), 5), process(11, 1, ("UP", "UP"), 7)])


def test_upstreams_are_merged_over_workers(source: FakeSource) -> None:
    with AdminClient(build_app(source)) as client:
        pools = client.get("/api/upstreams").json()
    assert [pool["name"] for pool in pools] == ["app"]
    first, second = pools[0]["servers"]
    assert (first["url"], first["state"], first["in_flight"]) == ("http://127.0.0.1:9001", "UP", 2)
    # One worker sees it DOWN, one UP: a tie goes to the worse state.
    assert (second["state"], second["workers"], second["failures"]) == (
        "DOWN",
        {"DOWN": 1, "UP": 1},
        2,
    )


def test_routes_certificates_and_cache(source: FakeSource) -> None:
    with AdminClient(build_app(source)) as client:
        routes = client.get("/api/routes").json()
        certificates = client.get("/api/certificates").json()
        cache = client.get("/api/cache").json()
    assert routes[0] == {
        "hosts": ["localhost"],
        "path_prefix": "/",
        "upstream": "app",
        "middlewares": [],
        "strip_prefix": False,
        "cache": True,
    }
    assert routes[1]["redirect"] == "https://example.org"
    assert certificates == [
        {
            "names": ["localhost", "127.0.0.1"],
            "not_after": "2027-03-06T00:00:00Z",
            "issuer": "CN=pygateway local CA",
            "source": "local",
        }
    ]
    assert (cache["entries"], cache["bytes"], cache["hits"], cache["misses"]) == (6, 600, 4, 2)


def test_purge_needs_a_path_prefix(source: FakeSource) -> None:
    with AdminClient(build_app(source)) as client:
        assert client.delete("/api/cache").status_code == 400
        assert client.delete("/api/cache?prefix=nope").status_code == 400
        answer = client.delete("/api/cache?prefix=/static")
    assert answer.json() == {"purged": 4, "prefix": "/static"}
    assert source.purged == ["/static"]


def test_reload_answers_422_with_every_error(source: FakeSource) -> None:
    with AdminClient(build_app(source)) as client:
        assert client.post("/api/reload").json() == {"reloaded": True, "warnings": []}
        source.reload_errors = ["config.toml: [gateway] https_port = 'x': must be an integer"]
        answer = client.post("/api/reload")
        assert client.get("/api/reload").status_code == 405
    assert answer.status_code == 422
    assert answer.json()["errors"] == source.reload_errors
    assert "nothing was changed" in answer.json()["message"]


def test_metrics_are_summed_and_valid(source: FakeSource) -> None:
    with AdminClient(build_app(source)) as client:
        answer = client.get("/metrics")
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    totals = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }
    key = (("code", "200"), ("route", "localhost/"), ("upstream", "app"))
    assert totals[("gateway_requests_total", key)] == 12
    assert totals[("gateway_connections_active", ())] == 4
    assert totals[("gateway_cache_requests_total", (("result", "hit"),))] == 4


def test_dashboard_openapi_and_static_assets(source: FakeSource) -> None:
    with AdminClient(build_app(source)) as client:
        page = client.get("/")
        script = client.get("/static/dashboard.js")
        spec = client.get("/openapi.json").json()
        overview = client.get("/api/overview").json()
    assert page.status_code == 200 and 'id="upstreams"' in page.text
    assert "/api/overview" in script.text
    assert {"/api/upstreams", "/api/cache", "/api/reload", "/metrics"} <= set(spec["paths"])
    assert overview["processes"] == [
        {"pid": 10, "worker": 0, "generation": 0, "requests": 5},
        {"pid": 11, "worker": 1, "generation": 0, "requests": 7},
    ]
    assert "not_after_epoch" not in overview["certificates"][0]


def test_basic_auth_from_htpasswd(source: FakeSource, tmp_path: Path) -> None:
    htpasswd = tmp_path / "admin.htpasswd"
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"ops:{hashed}\n")

    def basic(user: str, password: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"authorization": f"Basic {token}"}

    with AdminClient(build_app(source, htpasswd)) as client:
        missing = client.get("/api/upstreams")
        wrong = client.get("/api/upstreams", headers=basic("ops", "nope"))
        right = client.get("/api/upstreams", headers=basic("ops", "s3cret"))
        page = client.get("/", headers=basic("ops", "s3cret"))
    assert missing.status_code == 401 and wrong.status_code == 401
    assert missing.headers["www-authenticate"].startswith('Basic realm="pygateway admin"')
    assert right.status_code == 200 and page.status_code == 200
