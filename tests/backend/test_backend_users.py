"""Who may read, delete and list users; the admin's directory (POST /user); create-admin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from gateway.config import Settings

if TYPE_CHECKING:
    from conftest import Api

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Al", "email": "al@example.com"}, "name"),  # too short
        ({"name": "A" * 51, "email": "al@example.com"}, "name"),  # too long
        ({"name": "Agent 007", "email": "al@example.com"}, "name"),  # digits
        ({"name": "Ann_Lee", "email": "al@example.com"}, "name"),
        ({"name": "   ", "email": "al@example.com"}, "name"),
        ({"name": "Ann Lee", "email": "al@@example.com"}, "email"),  # bad e-mail
        ({"name": "Ann Lee", "email": "no-at-sign"}, "email"),
        ({"name": "Ann Lee"}, "email"),
        ({"name": 5, "email": "al@example.com"}, "name"),
        ({"name": "Ann Lee", "email": "al@example.com", "role": "admin"}, "role"),
    ],
)
async def test_create_user_validation(
    api: Api, client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    _, admin = await api.admin()
    response = await client.post("/user", headers=admin.headers, json=body)
    assert response.status_code == 400, response.text
    assert field in response.json()["errors"]


async def test_directory_entries(api: Api, client: httpx.AsyncClient) -> None:
    _, admin = await api.admin()
    response = await client.post(
        "/user", headers=admin.headers, json={"name": "José Ramón", "email": "Jose@Example.com"}
    )
    assert response.status_code == 201
    entry = response.json()
    assert entry == {"id": entry["id"], "name": "José Ramón", "email": "Jose@example.com"}

    # the e-mail is unique case-insensitively, across directory entries and accounts
    response = await client.post(
        "/user", headers=admin.headers, json={"name": "Someone Else", "email": "JOSE@example.com"}
    )
    assert response.status_code == 400
    assert response.json()["message"] == "A user with that email already exists."
    response = await client.post(
        "/register", json={"username": "jose", "email": "jose@example.com", "password": "password1"}
    )
    assert response.status_code == 400

    # a directory entry cannot log in (no username, no password)
    response = await client.post("/login", json={"username": "jose@example.com", "password": ""})
    assert response.status_code == 400
    response = await client.post("/login", json={"username": "jose@example.com", "password": "x"})
    assert response.status_code == 401

    response = await client.get(f"/user/{entry['id']}", headers=admin.headers)
    assert response.json()["username"] is None
    assert response.json()["activated"] is False


async def test_user_list_is_for_admins(api: Api, client: httpx.AsyncClient) -> None:
    account, session = await api.account()
    _, admin = await api.admin()
    response = await client.get("/users", headers=session.headers)
    assert response.status_code == 403
    response = await client.post(
        "/user", headers=session.headers, json={"name": "Ann Lee", "email": "ann@example.com"}
    )
    assert response.status_code == 403

    response = await client.get("/users", headers=admin.headers)
    assert response.status_code == 200
    listed = response.json()
    assert [u["username"] for u in listed][:1] == [account.username]
    assert all("password_hash" not in u and "password" not in u for u in listed)
    assert {u["role"] for u in listed} == {"user", "admin"}

    response = await client.get("/users?limit=1&offset=1", headers=admin.headers)
    assert len(response.json()) == 1 and response.json()[0]["role"] == "admin"
    for query in ("limit=0", "limit=1001", "limit=x", "offset=-1", f"offset={10**30}"):
        response = await client.get(f"/users?{query}", headers=admin.headers)
        assert response.status_code == 400, query
        assert response.json()["errors"]


async def test_users_see_only_themselves(api: Api, client: httpx.AsyncClient) -> None:
    alice, alice_session = await api.account()
    bob, bob_session = await api.account()
    _, admin = await api.admin()

    assert (await client.get(f"/user/{bob.id}", headers=alice_session.headers)).status_code == 403
    # 403, not 404, for ids that do not exist either: nothing to learn by probing
    assert (await client.get("/user/987654", headers=alice_session.headers)).status_code == 403
    response = await client.delete(f"/user/{bob.id}", headers=alice_session.headers)
    assert response.status_code == 403
    assert (await client.get(f"/user/{bob.id}", headers=bob_session.headers)).status_code == 200

    # an admin may read and delete anyone; unknown ids are 404 for an admin
    response = await client.get(f"/user/{alice.id}", headers=admin.headers)
    assert response.json()["username"] == alice.username
    assert (await client.get("/user/987654", headers=admin.headers)).status_code == 404
    assert (await client.delete("/user/987654", headers=admin.headers)).status_code == 404
    response = await client.delete(f"/user/{bob.id}", headers=admin.headers)
    assert response.status_code == 200
    assert (await client.get(f"/user/{bob.id}", headers=bob_session.headers)).status_code == 401


async def test_admin_role_is_read_from_the_database(
    api: Api, client: httpx.AsyncClient, settings: Settings
) -> None:
    """Promoting an account takes effect on its existing tokens; the token carries no role."""
    from backend.cli import create_admin

    account, session = await api.account()
    assert (await client.get("/users", headers=session.headers)).status_code == 403
    line = await create_admin(
        settings, username=account.username, email=account.email, password="new password 1"
    )
    assert "promoted" in line
    assert (await client.get("/users", headers=session.headers)).status_code == 200
    await api.login(account.username, "new password 1")


def test_create_admin_command(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[backend]\ndatabase = "var/backend.db"\noutbox = "var/outbox"\n')
    command = [
        sys.executable,
        str(ROOT / "run_backend.py"),
        "create-admin",
        "--config",
        str(config),
    ]
    command += ["--username", "root", "--email", "root@example.com", "--password-stdin"]
    result = subprocess.run(
        command, input="a long password\n", capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "created admin 'root'" in result.stdout
    result = subprocess.run(
        command, input="another password\n", capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "promoted admin 'root'" in result.stdout
    assert (tmp_path / "var" / "backend.db").stat().st_mode & 0o077 == 0

    result = subprocess.run(command, input="short\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "password" in result.stderr
    result = subprocess.run(command[:-1], input="", capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
