"""The original apps' flow end to end: client -> gateway (real TLS) -> backend workers.

register -> read the .eml -> confirm -> login -> get user -> generate array -> refresh ->
reuse the old refresh token (401, family revoked) -> logout -> the access token fails in every
worker -> delete.  Plus the FastAPI app's admin contract through the gateway.
"""

from __future__ import annotations

import email
import email.policy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from e2e.harness import PYTHON, REPO
from e2e.test_resilience import WORKERS, BackendStack, backend_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendStack]:
    with backend_stack(tmp_path_factory.mktemp("backend-e2e")) as s:
        yield s


def read_confirmation_link(outbox: Path, address: str) -> str:
    for path in sorted(outbox.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if address.lower() in str(message["To"]).lower():
            body = message.get_body(preferencelist=("plain",))
            assert body is not None
            for word in body.get_content().split():
                if "/user_confirm/" in word:
                    return word.strip("<>.,")
    raise AssertionError(f"no confirmation e-mail for {address} in {outbox}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_original_flow_through_the_gateway(stack: BackendStack) -> None:
    outbox = stack.database.parent / "outbox"
    with stack.gateway.client() as client:
        r = client.post(
            "/register",
            json={"username": "alice", "email": "alice@example.com", "password": "s3cret-pass!"},
        )
        assert r.status_code == 201, r.text
        user_id = r.json()["user"]["id"]

        link = urlsplit(read_confirmation_link(outbox, "alice@example.com"))
        assert link.path == f"/user_confirm/{user_id}"
        r = client.get(f"{link.path}?{link.query}")
        assert r.status_code == 200
        assert r.json() == {"message": "Verification completed"}

        r = client.post("/login", json={"username": "alice", "password": "s3cret-pass!"})
        assert r.status_code == 200
        tokens = r.json()
        assert tokens["token_type"] == "bearer"
        access, refresh = tokens["access_token"], tokens["refresh_token"]

        r = client.get(f"/user/{user_id}", headers=bearer(access))
        assert r.status_code == 200
        assert r.json()["username"] == "alice"
        assert "password" not in r.text

        r = client.post(
            "/generate_random_array", json={"sentence": "one two three"}, headers=bearer(access)
        )
        assert r.status_code == 200
        body = r.json()
        assert body["word_count"] == 3
        assert len(body["random_array"]) == 500
        assert all(0 <= x < 1 for x in body["random_array"])

        r = client.post("/refresh", headers=bearer(refresh))
        assert r.status_code == 200
        new_access, new_refresh = r.json()["access_token"], r.json()["refresh_token"]

        # Reusing the old refresh token is theft: 401, and the whole family dies.
        r = client.post("/refresh", headers=bearer(refresh))
        assert r.status_code == 401
        r = client.post("/refresh", headers=bearer(new_refresh))
        assert r.status_code == 401
        r = client.get(f"/user/{user_id}", headers=bearer(new_access))
        assert r.status_code == 401

        # A fresh session, then logout: its access token fails in every worker.
        r = client.post("/login", json={"username": "alice", "password": "s3cret-pass!"})
        access = r.json()["access_token"]
        r = client.post("/logout", headers=bearer(access))
        assert r.status_code == 200
        assert r.json() == {"message": f"User <id={user_id}> successfully logged out."}
    for index in range(WORKERS):
        with httpx.Client(trust_env=False, timeout=5) as direct:
            r = direct.get(f"{stack.worker_url(index)}/user/{user_id}", headers=bearer(access))
        assert r.status_code == 401, f"worker {index} still accepts a logged-out token"

    with stack.gateway.client() as client:
        r = client.post("/login", json={"username": "alice", "password": "s3cret-pass!"})
        access = r.json()["access_token"]
        r = client.delete(f"/user/{user_id}", headers=bearer(access))
        assert r.status_code == 200
        assert r.json() == {"message": "User deleted."}
        r = client.get(f"/user/{user_id}", headers=bearer(access))
        assert r.status_code == 401


def test_admin_users_api_through_the_gateway(stack: BackendStack) -> None:
    config = stack.database.parent.parent / "backend.toml"
    created = subprocess.run(
        [
            PYTHON,
            "run_backend.py",
            "create-admin",
            "--username",
            "root",
            "--email",
            "root@example.com",
            "--password-stdin",
            "--config",
            str(config),
        ],
        input="admin-pass-123\n",
        text=True,
        capture_output=True,
        cwd=REPO,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    with stack.gateway.client() as client:
        r = client.post("/login", json={"username": "root", "password": "admin-pass-123"})
        assert r.status_code == 200, r.text
        admin = bearer(r.json()["access_token"])

        cases = [
            ({"name": "Jo", "email": "jo@example.com"}, 400),  # too short
            ({"name": "J" * 51, "email": "long@example.com"}, 400),  # too long
            ({"name": "R2D2 Droid", "email": "r2@example.com"}, 400),  # digits
            ({"name": "Ada Lovelace", "email": "not-an-email"}, 400),
            ({"name": "Ada Lovelace", "email": "ada@example.com"}, 201),
            ({"name": "Ada Again", "email": "ADA@example.com"}, 400),  # duplicate
        ]
        for payload, status in cases:
            r = client.post("/user", json=payload, headers=admin)
            assert r.status_code == status, (payload, r.text)
            if status == 400:
                assert "message" in r.json()
            else:
                assert r.json()["email"] == payload["email"]
        r = client.get("/users", headers=admin)
        assert r.status_code == 200
        assert "ada@example.com" in {u["email"] for u in r.json()}
        r = client.get("/users")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].lower().startswith("bearer")
