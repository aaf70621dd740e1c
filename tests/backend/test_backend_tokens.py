"""JWTs: the codec on its own, and a table of forged or misused tokens against the app."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest

from backend.signing_key import key_file
from backend.tokens import ISSUER, InvalidToken, TokenCodec, TokenType
from gateway.config import Settings

if TYPE_CHECKING:
    from conftest import Account, Api, Session

SECRET = b"k" * 32
OTHER_SECRET = b"another key, just as long as the first"


def codec(secret: bytes = SECRET) -> TokenCodec:
    return TokenCodec(secret, access_ttl=900, refresh_ttl=3600)


def test_codec_round_trip_and_type_pinning() -> None:
    issued = codec().issue(TokenType.ACCESS, 42, family="fam")
    claims = codec().decode(issued.token, TokenType.ACCESS)
    assert (claims.user_id, claims.family, claims.type) == (42, "fam", TokenType.ACCESS)
    assert claims.expires_at - claims.issued_at == 900
    payload = jwt.decode(issued.token, SECRET, algorithms=["HS256"], issuer=ISSUER)
    assert payload["sub"] == "42" and set(payload) >= {"jti", "iat", "nbf", "exp", "type"}
    with pytest.raises(InvalidToken, match="refresh token is required"):
        codec().decode(issued.token, TokenType.REFRESH)
    with pytest.raises(InvalidToken):
        codec(OTHER_SECRET).decode(issued.token, TokenType.ACCESS)
    expired = codec().issue(TokenType.ACCESS, 42, family="fam", now=time.time() - 901)
    with pytest.raises(InvalidToken, match="expired"):
        codec().decode(expired.token, TokenType.ACCESS)
    confirm = codec().issue(TokenType.CONFIRM, 7)
    assert (
        codec().decode(confirm.token, TokenType.CONFIRM).expires_at - confirm.claims.issued_at
        == 86400
    )
    with pytest.raises(ValueError):
        codec().issue(TokenType.ACCESS, 1)


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(victim: Account, session: Session, **changes: Any) -> dict[str, Any]:
    payload = jwt.decode(session.access, options={"verify_signature": False})
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


Forge = Callable[["Account", "Session", bytes, TokenCodec], str]

ATTACKS: dict[str, Forge] = {
    "alg none": lambda v, s, key, c: (
        f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(v, s))}."
    ),
    "alg None unsigned": lambda v, s, key, c: f"{_b64({'alg': 'None'})}.{_b64(_claims(v, s))}.",
    "HS256 with another key": lambda v, s, key, c: jwt.encode(_claims(v, s), OTHER_SECRET, "HS256"),
    "HS512 with the real key": lambda v, s, key, c: jwt.encode(_claims(v, s), key, "HS512"),
    "missing exp": lambda v, s, key, c: jwt.encode(_claims(v, s, exp=None), key, "HS256"),
    "missing jti": lambda v, s, key, c: jwt.encode(_claims(v, s, jti=None), key, "HS256"),
    "missing type": lambda v, s, key, c: jwt.encode(_claims(v, s, type=None), key, "HS256"),
    "expired": lambda v, s, key, c: (
        c.issue(TokenType.ACCESS, v.id, family="x", now=time.time() - 3600).token
    ),
    "exp as a string": lambda v, s, key, c: jwt.encode(
        _claims(v, s, exp=str(int(time.time()) + 600)), key, "HS256"
    ),
    "wrong issuer": lambda v, s, key, c: jwt.encode(_claims(v, s, iss="someone"), key, "HS256"),
    "numeric sub": lambda v, s, key, c: jwt.encode(_claims(v, s, sub=v.id), key, "HS256"),
    "refresh token as access": lambda v, s, key, c: s.refresh,
    "tampered payload": lambda v, s, key, c: ".".join(
        [s.access.split(".")[0], _b64(_claims(v, s, role="admin")), s.access.split(".")[2]]
    ),
    "unknown family": lambda v, s, key, c: jwt.encode(_claims(v, s, fam="made-up"), key, "HS256"),
    "garbage": lambda v, s, key, c: "not.a.jwt",
}


@pytest.mark.anyio
@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_forged_tokens_are_refused_without_side_effects(
    api: Api, client: httpx.AsyncClient, settings: Settings, attack: str
) -> None:
    victim, session = await api.account()
    key = key_file(settings.backend.state_dir).read_bytes().strip()
    token = ATTACKS[attack](victim, session, key, TokenCodec(key, access_ttl=900, refresh_ttl=3600))
    headers = {"Authorization": f"Bearer {token}"}

    for method, path in [
        ("DELETE", f"/user/{victim.id}"),
        ("POST", "/logout"),
        ("GET", f"/user/{victim.id}"),
        ("GET", "/users"),
    ]:
        response = await client.request(method, path, headers=headers)
        assert response.status_code == 401, (attack, path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["message"]

    # nothing happened to the victim: still there, session still valid
    response = await client.get(f"/user/{victim.id}", headers=session.headers)
    assert response.status_code == 200


@pytest.mark.anyio
async def test_access_token_is_not_a_refresh_token(api: Api, client: httpx.AsyncClient) -> None:
    _, session = await api.account()
    response = await client.post("/refresh", headers={"Authorization": f"Bearer {session.access}"})
    assert response.status_code == 401
    assert "refresh token" in response.json()["message"]
    # and the real refresh token still works afterwards
    response = await client.post("/refresh", headers={"Authorization": f"Bearer {session.refresh}"})
    assert response.status_code == 200


@pytest.mark.anyio
async def test_token_of_a_deleted_user(api: Api, client: httpx.AsyncClient) -> None:
    victim, session = await api.account()
    _, admin = await api.admin()
    assert (await client.delete(f"/user/{victim.id}", headers=admin.headers)).status_code == 200
    for method, path in [("GET", f"/user/{victim.id}"), ("POST", "/generate_random_array")]:
        response = await client.request(
            method, path, headers=session.headers, json={"sentence": "x"}
        )
        assert response.status_code == 401
    response = await client.post("/refresh", headers={"Authorization": f"Bearer {session.refresh}"})
    assert response.status_code == 401
    # ids are never reused, so a new account cannot inherit the old token
    newcomer = await api.register()
    assert newcomer.id != victim.id
