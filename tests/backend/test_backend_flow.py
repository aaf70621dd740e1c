"""The original apps' flow end to end in-process, and the shape of every error answer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette

from backend import users
from backend.openapi import OPERATIONS
from backend.schemas import RANDOM_ARRAY_LENGTH

if TYPE_CHECKING:
    from conftest import Api

pytestmark = pytest.mark.anyio


async def test_original_flow(api: Api, client: httpx.AsyncClient) -> None:
    # register -> the e-mail lands in the outbox
    response = await client.post(
        "/register",
        json={"username": "alice", "email": "Alice@Example.COM", "password": "s3cret-pass"},
    )
    assert response.status_code == 201
    body = response.json()
    assert body["user"] == {
        "id": body["user"]["id"],
        "username": "alice",
        "email": "Alice@example.com",
        "activated": False,
    }
    user_id = body["user"]["id"]

    # login before confirming: 403 naming the address
    response = await client.post("/login", json={"username": "alice", "password": "s3cret-pass"})
    assert response.status_code == 403
    assert "Alice@example.com" in response.json()["message"]

    # the link uses the configured origin, never the request's Host
    link = urlsplit(api.confirmation_link("Alice@example.com"))
    assert (link.scheme, link.netloc, link.path) == (
        "https",
        "api.example.test:8443",
        f"/user_confirm/{user_id}",
    )
    assert parse_qs(link.query)["token"]
    response = await client.get(f"{link.path}?{link.query}")
    assert response.status_code == 200
    assert response.json() == {"message": "Verification completed"}
    # single use
    response = await client.get(f"{link.path}?{link.query}")
    assert response.status_code == 400

    # login with the e-mail in another case
    response = await client.post(
        "/login", json={"username": "ALICE@example.com", "password": "s3cret-pass"}
    )
    assert response.status_code == 200
    tokens = response.json()
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 15 * 60
    access = {"Authorization": f"Bearer {tokens['access_token']}"}

    response = await client.get(f"/user/{user_id}", headers=access)
    assert response.status_code == 200
    assert response.json() == {
        "id": user_id,
        "username": "alice",
        "name": None,
        "email": "Alice@example.com",
        "activated": True,
        "role": "user",
    }
    assert response.headers["cache-control"] == "no-store"

    response = await client.post(
        "/generate_random_array", headers=access, json={"sentence": "  the quick\tbrown fox \n"}
    )
    assert response.status_code == 200
    result = response.json()
    assert result["user"] == "alice"
    assert result["input_sentence"] == "  the quick\tbrown fox \n"
    assert result["word_count"] == 4
    assert len(result["random_array"]) == RANDOM_ARRAY_LENGTH
    assert all(isinstance(x, float) and 0.0 <= x < 1.0 for x in result["random_array"])

    # refresh rotates: a new pair, the old refresh token is spent
    old_refresh = {"Authorization": f"Bearer {tokens['refresh_token']}"}
    response = await client.post("/refresh", headers=old_refresh)
    assert response.status_code == 200
    rotated = response.json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    new_refresh = {"Authorization": f"Bearer {rotated['refresh_token']}"}
    new_access = {"Authorization": f"Bearer {rotated['access_token']}"}

    # reuse of the spent token revokes the whole family, the newer tokens included
    response = await client.post("/refresh", headers=old_refresh)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    response = await client.post("/refresh", headers=new_refresh)
    assert response.status_code == 401
    response = await client.get(f"/user/{user_id}", headers=new_access)
    assert response.status_code == 401

    # a fresh login, then logout: that access token and its refresh token stop working
    session = await api.login("alice", "s3cret-pass")
    response = await client.post("/logout", headers=session.headers)
    assert response.status_code == 200
    assert response.json() == {"message": f"User <id={user_id}> successfully logged out."}
    response = await client.get(f"/user/{user_id}", headers=session.headers)
    assert response.status_code == 401
    response = await client.post("/refresh", headers={"Authorization": f"Bearer {session.refresh}"})
    assert response.status_code == 401

    # delete: the user's other sessions die with it
    session = await api.login("alice", "s3cret-pass")
    other = await api.login("alice", "s3cret-pass")
    response = await client.delete(f"/user/{user_id}", headers=session.headers)
    assert response.status_code == 200
    assert response.json() == {"message": "User deleted."}
    response = await client.get(f"/user/{user_id}", headers=other.headers)
    assert response.status_code == 401
    response = await client.post("/login", json={"username": "alice", "password": "s3cret-pass"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "a@example.com", "password": "password1"}, "username"),
        ({"username": "ab", "email": "a@example.com", "password": "password1"}, "username"),
        ({"username": "a" * 81, "email": "a@example.com", "password": "password1"}, "username"),
        ({"username": "bad name", "email": "a@example.com", "password": "password1"}, "username"),
        ({"username": "bob", "email": "not-an-email", "password": "password1"}, "email"),
        ({"username": "bob", "email": "a@example.com", "password": "short"}, "password"),
        ({"username": "bob", "email": "a@example.com", "password": "x" * 257}, "password"),
        ({"username": "bob", "email": "a@example.com", "password": 12345678}, "password"),
        ({"username": "bob", "email": "a@example.com", "password": "password1", "x": 1}, "x"),
    ],
)
async def test_register_validation(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await client.post("/register", json=body)
    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert response.json()["message"].startswith("Invalid input")


async def test_register_duplicates(api: Api, client: httpx.AsyncClient) -> None:
    await api.register("carol", email="carol@example.com")
    response = await client.post(
        "/register", json={"username": "CAROL", "email": "c2@example.com", "password": "password1"}
    )
    assert response.status_code == 400
    assert response.json()["message"] == users.DUPLICATE_USERNAME
    response = await client.post(
        "/register",
        json={"username": "carol2", "email": "Carol@EXAMPLE.com", "password": "password1"},
    )
    assert response.status_code == 400
    assert response.json()["message"] == users.DUPLICATE_EMAIL


async def test_confirmation_errors(api: Api, client: httpx.AsyncClient) -> None:
    first = await api.register()
    second = await api.register()
    first_token = parse_qs(urlsplit(api.confirmation_link(first.email)).query)["token"][0]
    assert (await client.get(f"/user_confirm/999999?token={first_token}")).status_code == 404
    assert (await client.get(f"/user_confirm/{first.id}")).status_code == 400
    assert (await client.get(f"/user_confirm/{first.id}?token=garbage")).status_code == 400
    # another user's token does not confirm this one
    response = await client.get(f"/user_confirm/{second.id}?token={first_token}")
    assert response.status_code == 400
    # an access token is not a confirmation token
    account, session = await api.account()
    response = await client.get(f"/user_confirm/{account.id}?token={session.access}")
    assert response.status_code == 400


async def test_bad_bodies(api: Api, client: httpx.AsyncClient) -> None:
    _, session = await api.account()
    url = "/generate_random_array"
    headers = session.headers
    cases: list[tuple[dict[str, object], int]] = [
        ({"content": b"sentence=hi", "headers": {"Content-Type": "text/plain"}}, 415),
        ({"content": b'{"sentence": "hi"}'}, 415),  # no Content-Type at all
        ({"content": b"{nope", "headers": {"Content-Type": "application/json"}}, 400),
        ({"content": b'["a"]', "headers": {"Content-Type": "application/json"}}, 400),
        ({"content": b'{"sentence": NaN}', "headers": {"Content-Type": "application/json"}}, 400),
        (
            {
                "content": b'{"sentence": "\\ud800"}',
                "headers": {"Content-Type": "application/json"},
            },
            400,
        ),
        ({"content": b"\xff\xfe\x00", "headers": {"Content-Type": "application/json"}}, 400),
        ({"json": {}}, 400),
        ({"json": {"sentence": None}}, 400),
        ({"json": {"sentence": 42}}, 400),
        ({"json": {"sentence": ["a"]}}, 400),
        ({"json": {"sentence": "a" * 10_001}}, 413),
        ({"json": {"sentence": "a" * (1024 * 1024)}}, 413),
    ]
    for kwargs, status in cases:
        request_headers = {**headers, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        response = await client.post(url, headers=request_headers, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, (kwargs, response.text)
        assert isinstance(response.json()["message"], str)
    ok = await client.post(url, headers=headers, json={"sentence": "a" * 10_000})
    assert ok.status_code == 200

    # a body streamed without Content-Length is counted as it arrives
    async def chunks() -> object:
        for _ in range(2048):
            yield b" " * 1024

    response = await client.post(
        "/login", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.json() == {"message": "Not Found"}
    response = await client.get("/user/abc")
    assert response.status_code == 404
    response = await client.get("/register/")
    assert response.status_code == 404
    response = await client.put("/user/1")
    assert response.status_code == 405
    assert "message" in response.json()
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "DELETE"}
    response = await client.get(f"/user/{2**70}", headers={"Authorization": "Bearer x"})
    assert response.status_code == 401


async def test_missing_token_is_401_with_challenge(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("POST", "/logout"),
        ("GET", "/user/1"),
        ("GET", "/users"),
        ("POST", "/refresh"),
        ("POST", "/generate_random_array"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["message"]
    response = await client.get("/user/1", headers={"Authorization": "Basic dTpw"})
    assert response.status_code == 401


async def test_health_status_and_openapi(app: Starlette, client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["database"] == "ok" and body["worker"] == 3
    assert isinstance(body["pid"], int)

    assert (await client.get("/status")).json() == {"message": "API is up and running"}

    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    served = {
        (method, route.path.replace(":int", ""))
        for route in app.routes
        for method in getattr(route, "methods", set()) - {"HEAD"}
    }
    documented = {(op.method, op.path) for op in OPERATIONS}
    assert served == documented
    in_document = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert in_document == documented
    for name in ("RegisterRequest", "LoginRequest", "CreateUserRequest", "UserOut", "ErrorBody"):
        assert name in document["components"]["schemas"]


async def test_health_is_503_when_the_database_is_gone(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    await app.state.services.db.close()
    response = await client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["database"] == "unreachable" and body["message"]
    # every endpoint that needs the database says 503 too, never 500
    response = await client.post("/login", json={"username": "x", "password": "y"})
    assert response.status_code == 503


async def test_unexpected_errors_are_logged_500s(
    api: Api,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, session = await api.admin()

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(users, "list_page", broken)
    with caplog.at_level(logging.ERROR, logger="backend"):
        response = await client.get("/users", headers=session.headers)
    assert response.status_code == 500
    assert response.json() == {"message": "Internal server error"}
    assert "boom" in caplog.text
