"""Property-based: no request generated from /openapi.json makes the app answer 5xx.

schemathesis turns each operation of the document into a hypothesis strategy, both valid
(positive) and deliberately invalid (negative) requests, and sends them through its in-process
ASGI client.  (``as_strategy`` rather than ``schemathesis.pytest.from_fixture``: the latter does
not work with pytest 9.)  About half the cases carry a valid token of a fresh admin, so DELETE
and POST /user go deep; it is minted straight into the database so no password hashing slows
the run.  The rest exercise the unauthenticated paths.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans

from backend.app import create_app
from backend.openapi import OPERATIONS
from backend.signing_key import key_file
from backend.tokens import TokenCodec, TokenType
from gateway.config import Settings

TokenFactory = Callable[[TokenType], str]


@pytest.fixture
def api_schema(settings: Settings) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(settings, environ={})
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        # schemathesis keeps an app's lifespan (our database pool) open until exit; end it here.
        shutdown_lifespans()


@pytest.fixture
def database() -> str:
    """The API's input handling does not depend on the database: fuzz on SQLite only."""
    return "var/backend.db"


@pytest.fixture
def mint(settings: Settings, api_schema: schemathesis.BaseSchema) -> TokenFactory:
    """A token of a brand-new admin with its own session (the app's start-up made the schema
    and the secret when the schema was loaded)."""
    database = settings.backend.database
    assert isinstance(database, Path)
    codec = TokenCodec(
        key_file(settings.backend.state_dir).read_bytes().strip(), access_ttl=900, refresh_ttl=3600
    )
    numbers = itertools.count()

    def mint_token(kind: TokenType) -> str:
        n = next(numbers)
        now = time.time()
        with sqlite3.connect(database) as db:
            (user_id,) = db.execute(
                "INSERT INTO users (username, email, email_key, password_hash, activated, role,"
                " created_at) VALUES (?, ?, ?, 'x', 1, 'admin', ?) RETURNING id",
                (f"fuzz{n}", f"fuzz{n}@example.com", f"fuzz{n}@example.com", now),
            ).fetchone()
            access = codec.issue(TokenType.ACCESS, user_id, family=f"fam{n}", now=now)
            refresh = codec.issue(TokenType.REFRESH, user_id, family=f"fam{n}", now=now)
            db.execute(
                "INSERT INTO token_families (id, user_id, refresh_jti, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (f"fam{n}", user_id, refresh.claims.jti, now, refresh.claims.expires_at),
            )
        db.close()
        return (refresh if kind is TokenType.REFRESH else access).token

    return mint_token


EXAMPLES = 30
CASES = [
    pytest.param(op.method, op.path, mode, id=f"{op.method} {op.path} {mode.value}")
    for op in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    # nothing to get wrong in a request without parameters or body
    if mode is GenerationMode.POSITIVE or op.request is not None or op.parameters
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_input_causes_a_server_error(
    api_schema: schemathesis.BaseSchema,
    mint: TokenFactory,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode), authenticated=st.booleans())
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def check(case: schemathesis.Case, authenticated: bool) -> None:
        headers = {}
        if authenticated:
            kind = TokenType.REFRESH if path == "/refresh" else TokenType.ACCESS
            headers["Authorization"] = f"Bearer {mint(kind)}"
        response = case.call(headers=headers)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        assert response.headers["content-type"] == ["application/json"]
        if response.status_code >= 400:
            assert isinstance(response.json()["message"], str)

    check()
