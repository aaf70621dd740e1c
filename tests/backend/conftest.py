"""Fixtures for the backend's in-process tests: a fresh app on a temporary database and outbox,
and ``Api``, a small client that knows the register -> confirm -> login dance."""

from __future__ import annotations

import email
import email.policy
import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from support.postgres import postgres  # noqa: F401 - the session's PostgreSQL server

from backend.app import create_app
from backend.cli import create_admin
from gateway.config import Settings, parse_settings

PASSWORD = "correct horse battery staple"
PUBLIC_URL = "https://api.example.test:8443"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest) -> str:
    """What ``[backend] database`` says: a SQLite file, or a fresh PostgreSQL database (the
    session's server is started by the first test that asks for one)."""
    if request.param == "sqlite":
        return "var/backend.db"
    url: str = request.getfixturevalue("postgres").new_database()
    return url


@pytest.fixture
def settings(tmp_path: Path, database: str) -> Settings:
    return parse_settings(
        {
            "gateway": {"hostnames": ["api.example.test"], "https_port": 8443},
            "backend": {"database": database, "outbox": "var/outbox"},
        },
        tmp_path / "config.toml",
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    application = create_app(settings, worker=3, environ={})
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    # The peer is loopback, as the gateway would be: X-Real-IP is honoured.
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@dataclass
class Account:
    id: int
    username: str
    email: str
    password: str = PASSWORD


@dataclass
class Session:
    access: str
    refresh: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.access)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Api:
    _names = itertools.count(1)

    def __init__(self, client: httpx.AsyncClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def new_name(self, prefix: str = "user") -> str:
        return f"{prefix}{next(self._names)}"

    async def register(self, username: str | None = None, **overrides: Any) -> Account:
        username = username or self.new_name()
        body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
        body.update(overrides)
        response = await self.client.post("/register", json=body)
        assert response.status_code == 201, response.text
        user = response.json()["user"]
        return Account(user["id"], username, user["email"], body["password"])

    def confirmation_link(self, address: str) -> str:
        """The link in the newest message to ``address`` in the outbox."""
        messages = []
        for path in sorted(self.settings.backend.outbox.glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if message["To"] == address:
                messages.append(message)
        assert messages, f"no e-mail to {address} in the outbox"
        body = messages[-1].get_body(("plain",))
        assert body is not None
        match = re.search(r"https://\S+", body.get_content())
        assert match is not None
        return match.group(0)

    async def confirm(self, account: Account) -> None:
        link = urlsplit(self.confirmation_link(account.email))
        response = await self.client.get(f"{link.path}?{link.query}")
        assert response.status_code == 200, response.text

    async def login(self, login: str, password: str = PASSWORD) -> Session:
        response = await self.client.post("/login", json={"username": login, "password": password})
        assert response.status_code == 200, response.text
        tokens = response.json()
        return Session(tokens["access_token"], tokens["refresh_token"])

    async def account(self, username: str | None = None) -> tuple[Account, Session]:
        """A confirmed, logged-in user."""
        account = await self.register(username)
        await self.confirm(account)
        return account, await self.login(account.username)

    async def admin(self) -> tuple[Account, Session]:
        username = self.new_name("admin")
        address = f"{username}@example.com"
        await create_admin(self.settings, username=username, email=address, password=PASSWORD)
        session = await self.login(username)
        me = await self.client.get("/users", headers=session.headers)
        user_id = next(u["id"] for u in me.json() if u["username"] == username)
        return Account(user_id, username, address), session


@pytest.fixture
def api(client: httpx.AsyncClient, settings: Settings) -> Api:
    return Api(client, settings)
