"""The products service in-process, next to the backend whose tokens it accepts: anyone reads,
admins write, prices are exact decimal strings, revocation and forged tokens are honoured; on
SQLite and on PostgreSQL (sharing the backend's database there, each with its own schema table).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from backend.signing_key import key_file
from gateway.config import Settings
from products.app import create_app
from products.openapi import OPERATIONS
from products.schemas import format_price, parse_price

if TYPE_CHECKING:
    from conftest import Api

pytestmark = pytest.mark.anyio


@pytest.fixture
async def products(
    settings: Settings, tmp_path: Path, app: Starlette
) -> AsyncIterator[httpx.AsyncClient]:
    """The products app; the backend ``app`` has started first (schema and signing key)."""
    database = settings.backend.database
    target = tmp_path / "products.db" if isinstance(database, Path) else database
    service = create_app(target, settings.backend, environ={})
    async with service.router.lifespan_context(service):
        transport = httpx.ASGITransport(app=service, client=("127.0.0.1", 40001))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


PHONE = {"name": "Phone", "description": "A phone", "price": "199.9", "stock": 5}


async def test_admin_crud_and_anyone_reads(api: Api, products: httpx.AsyncClient) -> None:
    _, admin = await api.admin()
    response = await products.post("/products", json=PHONE, headers=admin.headers)
    assert response.status_code == 201, response.text
    phone = response.json()
    assert phone == {**PHONE, "id": phone["id"], "price": "199.90"}
    assert response.headers["cache-control"] == "no-store"

    second = await products.post(
        "/products", json={"name": "Case", "price": "5", "stock": 0}, headers=admin.headers
    )
    assert second.json()["price"] == "5.00" and second.json()["description"] == ""

    # anyone reads, no token needed
    listed = await products.get("/products")
    assert [p["name"] for p in listed.json()] == ["Phone", "Case"]
    assert (await products.get("/products?limit=1&offset=1")).json() == [second.json()]
    assert (await products.get(f"/products/{phone['id']}")).json() == phone

    response = await products.patch(
        f"/products/{phone['id']}", json={"price": "0.99", "stock": 7}, headers=admin.headers
    )
    assert response.status_code == 200
    assert response.json() == {**phone, "price": "0.99", "stock": 7}

    response = await products.delete(f"/products/{phone['id']}", headers=admin.headers)
    assert response.json() == {"message": "Product deleted."}
    for method in ("GET", "PATCH", "DELETE"):
        response = await products.request(
            method, f"/products/{phone['id']}", json={"stock": 1}, headers=admin.headers
        )
        assert response.status_code == 404 and response.json() == {"message": "Product not found."}


async def test_only_admins_write(api: Api, products: httpx.AsyncClient) -> None:
    _, user = await api.account()
    _, admin = await api.admin()
    created = (await products.post("/products", json=PHONE, headers=admin.headers)).json()
    attempts = [
        ("POST", "/products", PHONE),
        ("PATCH", f"/products/{created['id']}", {"stock": 0}),
        ("DELETE", f"/products/{created['id']}", None),
    ]
    for method, path, body in attempts:
        response = await products.request(method, path, json=body, headers=user.headers)
        assert response.status_code == 403, response.text
        assert response.json() == {"message": "This endpoint is for administrators only."}
        response = await products.request(method, path, json=body)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="backend"'
    assert (await products.get(f"/products/{created['id']}")).json() == created


async def test_revoked_and_forged_tokens_are_refused(
    api: Api, client: httpx.AsyncClient, products: httpx.AsyncClient, settings: Settings
) -> None:
    admin_account, admin = await api.admin()
    assert (await products.post("/products", json=PHONE, headers=admin.headers)).is_success

    key = key_file(settings.backend.state_dir).read_bytes().strip()
    claims = jwt.decode(admin.access, key, algorithms=["HS256"], options={"verify_aud": False})
    forged = {
        "other key": jwt.encode(claims, b"k" * 40, "HS256"),
        "alg none": jwt.encode(claims, None, "none"),
        "HS512 with the right key": jwt.encode(claims, key, "HS512"),
        "expired": jwt.encode({**claims, "exp": int(time.time()) - 5}, key, "HS256"),
        "refresh token": admin.refresh,
    }
    for name, token in forged.items():
        response = await products.post(
            "/products", json=PHONE, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, name

    # a logout at the backend is honoured here at once
    assert (await client.post("/logout", headers=admin.headers)).status_code == 200
    response = await products.post("/products", json=PHONE, headers=admin.headers)
    assert response.status_code == 401
    assert response.json() == {"message": "The token has been revoked."}
    assert len((await products.get("/products")).json()) == 1
    assert admin_account.username


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**PHONE, "price": "-1.00"}, "price"),
        ({**PHONE, "price": "abc"}, "price"),
        ({**PHONE, "price": "1.999"}, "price"),
        ({**PHONE, "price": 19.99}, "price"),
        ({**PHONE, "price": "1e3"}, "price"),
        ({**PHONE, "price": "NaN"}, "price"),
        ({**PHONE, "price": "100000000000.00"}, "price"),
        ({**PHONE, "stock": -1}, "stock"),
        ({**PHONE, "stock": "3"}, "stock"),
        ({**PHONE, "stock": 1.5}, "stock"),
        ({**PHONE, "name": ""}, "name"),
        ({"name": "x", "price": "1"}, "stock"),
        ({**PHONE, "colour": "red"}, "colour"),
    ],
)
async def test_bad_products_are_400_with_the_field(
    api: Api, products: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    _, admin = await api.admin()
    response = await products.post("/products", json=body, headers=admin.headers)
    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert list(errors) == [field] and errors[field][0]
    assert response.json()["message"].startswith("Invalid input")
    assert (await products.get("/products")).json() == []


async def test_patch_needs_a_non_null_field(api: Api, products: httpx.AsyncClient) -> None:
    _, admin = await api.admin()
    product = (await products.post("/products", json=PHONE, headers=admin.headers)).json()
    path = f"/products/{product['id']}"
    for body, field in [({}, "body"), ({"name": None}, "name"), ({"price": "-2"}, "price")]:
        response = await products.patch(path, json=body, headers=admin.headers)
        assert response.status_code == 400 and field in response.json()["errors"], body
    assert (await products.get(path)).json() == product


async def test_price_round_trips_exactly() -> None:
    for text, cents in [("0", 0), ("0.1", 10), ("19.99", 1999), ("12345678901.23", 1234567890123)]:
        assert parse_price(text) == cents
    assert format_price(1999) == "19.99" and format_price(5) == "0.05"
    # the classic float trap: 0.1 + 0.2 is exactly 0.30 here
    assert format_price(parse_price("0.1") + parse_price("0.2")) == "0.30"


async def test_health_openapi_and_error_shape(products: httpx.AsyncClient) -> None:
    health = await products.get("/products/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    document = (await products.get("/products/openapi.json")).json()
    documented = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    assert documented == {(op.method, op.path) for op in OPERATIONS}
    assert document["components"]["schemas"]["ProductIn"]["properties"]["price"]["type"] == "string"
    response = await products.get("/products/abc")
    assert response.status_code == 404 and response.json() == {"message": "Not Found"}
    response = await products.put("/products")
    assert response.status_code == 405 and response.json()["message"]


async def test_every_route_is_documented() -> None:
    service = create_app(Path("unused.db"), Settings(Path("c.toml")).backend)
    served = set()
    for route in service.routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                served.add((method, route.path.replace(":int", "")))
    assert served == {(op.method, op.path) for op in OPERATIONS}
