"""Logging in: same answer for unknown users and wrong passwords, throttling, rehashing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
from argon2 import PasswordHasher
from starlette.applications import Starlette
from support.databases import run_sql

from backend import passwords
from backend.app import create_app
from backend.inputs import client_address
from backend.ratelimit import PER_CLIENT, PER_USERNAME, Limit, retry_after
from gateway.config import Settings

if TYPE_CHECKING:
    from conftest import Api


def test_retry_after() -> None:
    limit = Limit("user", max_failures=3, window=100.0)
    assert retry_after([], limit, now=1000.0) is None
    assert retry_after([950.0, 960.0], limit, now=1000.0) is None
    assert retry_after([950.0, 960.0, 970.0], limit, now=1000.0) == 50
    # failures older than the window do not count
    assert retry_after([850.0, 960.0, 970.0], limit, now=1000.0) is None
    # more than the limit (concurrent attempts): wait until enough have expired
    assert retry_after([950.0, 960.0, 970.0, 980.0], limit, now=1000.0) == 60
    assert retry_after([900.5, 960.0, 970.0], limit, now=1000.0) == 1
    assert (PER_USERNAME.max_failures, PER_CLIENT.max_failures) == (5, 20)


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        ("127.0.0.1", {"x-real-ip": "203.0.113.7"}, "203.0.113.7"),
        ("::1", {"x-forwarded-for": "198.51.100.1, 203.0.113.7"}, "203.0.113.7"),
        ("127.0.0.1", {"x-real-ip": "not an ip"}, "127.0.0.1"),
        ("127.0.0.1", {}, "127.0.0.1"),
        # not from the gateway: the headers are the client's own claims and are ignored
        ("198.51.100.9", {"x-real-ip": "203.0.113.7"}, "198.51.100.9"),
        ("198.51.100.9", {"x-forwarded-for": "127.0.0.1"}, "198.51.100.9"),
        ("testclient", {"x-real-ip": "203.0.113.7"}, "testclient"),
        (None, {}, "unknown"),
    ],
)
def test_client_address(peer: str | None, headers: dict[str, str], expected: str) -> None:
    assert client_address(peer, headers) == expected


@pytest.mark.anyio
async def test_unknown_user_and_wrong_password_look_the_same(
    api: Api, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = await api.register()
    await api.confirm(account)
    seen: list[passwords.Verification] = []
    real = passwords.verify_sync

    def spy(stored_hash: str | None, password: str) -> passwords.Verification:
        seen.append(real(stored_hash, password))
        return seen[-1]

    monkeypatch.setattr(passwords, "verify_sync", spy)
    unknown = await client.post("/login", json={"username": "nobody", "password": "whatever1"})
    wrong = await client.post("/login", json={"username": account.username, "password": "nope"})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json() == {"message": "Invalid credentials!"}
    assert unknown.headers["www-authenticate"] == wrong.headers["www-authenticate"]
    # the unknown user was verified against the dummy hash: the same argon2 work was done
    assert [v.used_dummy for v in seen] == [True, False]
    assert not any(v.ok for v in seen)


@pytest.mark.anyio
async def test_repeated_failures_are_throttled_per_username(
    api: Api, client: httpx.AsyncClient
) -> None:
    account, _ = await api.account()
    for _ in range(PER_USERNAME.max_failures):
        response = await client.post("/login", json={"username": account.username, "password": "x"})
        assert response.status_code == 401
    # now even the right password is refused, without being checked
    response = await client.post(
        "/login", json={"username": account.username.upper(), "password": account.password}
    )
    assert response.status_code == 429
    assert 0 < int(response.headers["retry-after"]) <= PER_USERNAME.window
    assert "try again" in response.json()["message"]
    # another account from the same client is not affected
    other, _ = await api.account()
    await api.login(other.username)


@pytest.mark.anyio
async def test_repeated_failures_are_throttled_per_client(app: Starlette, api: Api) -> None:
    def client_at(peer: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(peer, 1234))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    account, _ = await api.account()
    async with client_at("127.0.0.1") as gateway, client_at("198.51.100.9") as direct:
        for i in range(PER_CLIENT.max_failures):
            response = await gateway.post(
                "/login",
                json={"username": f"guess{i}", "password": "x"},
                headers={"X-Real-IP": "203.0.113.7"},
            )
            assert response.status_code == 401
        blocked = await gateway.post(
            "/login",
            json={"username": account.username, "password": account.password},
            headers={"X-Real-IP": "203.0.113.7"},
        )
        assert blocked.status_code == 429
        assert int(blocked.headers["retry-after"]) > 0
        # another client behind the gateway is fine
        response = await gateway.post(
            "/login",
            json={"username": account.username, "password": account.password},
            headers={"X-Real-IP": "203.0.113.8"},
        )
        assert response.status_code == 200
        # a direct client cannot dodge its own limit by inventing X-Real-IP values
        for i in range(PER_CLIENT.max_failures):
            response = await direct.post(
                "/login",
                json={"username": f"other{i}", "password": "x"},
                headers={"X-Real-IP": f"10.0.0.{i}"},
            )
            assert response.status_code == 401
        response = await direct.post(
            "/login",
            json={"username": "other99", "password": "x"},
            headers={"X-Real-IP": "10.9.9.9"},
        )
        assert response.status_code == 429


@pytest.mark.anyio
async def test_throttle_is_shared_between_workers(settings: Settings, api: Api) -> None:
    """Two app instances on one database stand in for two worker processes."""
    account, _ = await api.account()
    second = create_app(settings, worker=1, environ={})
    async with second.router.lifespan_context(second):
        transport = httpx.ASGITransport(app=second, client=("127.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
            for _ in range(PER_USERNAME.max_failures):
                response = await other.post(
                    "/login", json={"username": account.username, "password": "x"}
                )
                assert response.status_code == 401
    response = await api.client.post(
        "/login", json={"username": account.username, "password": account.password}
    )
    assert response.status_code == 429


@pytest.mark.anyio
async def test_weak_hash_is_upgraded_on_login(api: Api, settings: Settings) -> None:
    account = await api.register()
    await api.confirm(account)
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(account.password)
    await run_sql(settings, "UPDATE users SET password_hash = ? WHERE id = ?", (weak, account.id))
    await api.login(account.username)
    rows = await run_sql(settings, "SELECT password_hash FROM users WHERE id = ?", (account.id,))
    stored = rows[0][0]
    assert stored != weak
    assert not passwords.HASHER.check_needs_rehash(stored)
    await api.login(account.username)
