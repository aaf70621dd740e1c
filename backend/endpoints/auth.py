"""Accounts and sessions: register, confirm the e-mail, log in, refresh, log out."""

from __future__ import annotations

import logging
import time
from email.message import EmailMessage
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import sessions, users
from ..auth import authenticate, bearer_token, verified_claims
from ..db import Connection
from ..errors import BadRequest, Forbidden, NotFound, TooManyRequests, Unauthorized
from ..inputs import path_user_id, read_json, request_client_address
from ..mail import confirmation_link, confirmation_message
from ..passwords import hash_password, verify_password
from ..schemas import (
    LoginRequest,
    Message,
    RegisteredUser,
    RegisterRequest,
    RegisterResponse,
    TokenResponse,
    parse,
)
from ..state import services
from ..tokens import InvalidToken, TokenType
from ..users import User

log = logging.getLogger("backend.mail")

INVALID_CREDENTIALS = "Invalid credentials!"
BAD_CONFIRMATION = "This confirmation link is invalid, expired or already used."


async def register(request: Request) -> JSONResponse:
    s = services(request)
    body = parse(RegisterRequest, await read_json(request))
    password_hash = await hash_password(body.password)

    async def create(conn: Connection) -> tuple[User, EmailMessage, str, Path]:
        user = await users.create_account(
            conn, username=body.username, email=body.email, password_hash=password_hash
        )
        confirm = s.tokens.issue(TokenType.CONFIRM, user.id)
        await users.set_confirmation_jti(conn, user.id, confirm.claims.jti)
        link = confirmation_link(s.public_url, user.id, confirm.token)
        message = confirmation_message(
            sender=s.settings.mail_from, recipient=user.email, username=body.username, link=link
        )
        # Inside the transaction: if the outbox cannot be written the account is not created,
        # rather than created with no way to confirm it.
        return user, message, link, await s.mailer.store(message)

    user, message, link, path = await s.db.write(create)
    # The demo has no mail server: say where the message is and what to open.
    log.info("confirmation e-mail for user %d written to %s; link: %s", user.id, path, link)
    await s.mailer.deliver(message)
    response = RegisterResponse(
        message=f"User created. A confirmation e-mail was sent to {user.email}.",
        user=RegisteredUser(
            id=user.id, username=body.username, email=user.email, activated=user.activated
        ),
    )
    return JSONResponse(response.model_dump(), status_code=201)


async def confirm_email(request: Request) -> JSONResponse:
    s = services(request)
    user_id = path_user_id(request)
    user = await s.db.read(lambda conn: users.get(conn, user_id))
    if user is None:
        raise NotFound("User not found.")
    token = request.query_params.get("token", "")
    try:
        claims = s.tokens.decode(token, TokenType.CONFIRM)
    except InvalidToken:
        raise BadRequest(BAD_CONFIRMATION) from None
    if claims.user_id != user_id:
        raise BadRequest(BAD_CONFIRMATION)
    if not await s.db.write(lambda conn: users.confirm(conn, user_id, claims.jti)):
        raise BadRequest(BAD_CONFIRMATION)
    return JSONResponse(Message(message="Verification completed").model_dump())


async def login(request: Request) -> JSONResponse:
    s = services(request)
    body = parse(LoginRequest, await read_json(request))
    client = request_client_address(request)

    async def look_up(conn: Connection) -> tuple[int | None, User | None]:
        wait = await s.throttle.retry_after(conn, body.username, client, time.time())
        if wait is not None:
            return wait, None
        return None, await users.find_for_login(conn, body.username)

    wait, user = await s.db.read(look_up)
    if wait is not None:
        raise TooManyRequests(
            f"Too many failed login attempts; try again in {wait} seconds.", retry_after=wait
        )
    # Unknown users are checked against a dummy hash: same work, same time, same answer.
    verification = await verify_password(user.password_hash if user else None, body.password)
    if user is None or not verification.ok:

        async def record(conn: Connection) -> None:
            await s.throttle.record_failure(conn, body.username, client, time.time())

        await s.db.write(record)
        raise Unauthorized(INVALID_CREDENTIALS, invalid_token=False)
    if not user.activated:
        raise Forbidden(
            f"Please confirm your e-mail address {user.email} first: "
            "open the link in the message we sent you."
        )

    async def start(conn: Connection) -> sessions.TokenPair | None:
        now = time.time()
        await s.throttle.clear(conn, [body.username, user.username or "", user.email])
        if verification.new_hash is not None:
            await users.set_password_hash(conn, user.id, verification.new_hash)
        await sessions.prune(conn, now)
        return await sessions.start(conn, s.tokens, user.id, now)

    pair = await s.db.write(start)
    if pair is None:  # deleted between the password check and now
        raise Unauthorized(INVALID_CREDENTIALS, invalid_token=False)
    return JSONResponse(_token_response(pair).model_dump())


async def refresh(request: Request) -> JSONResponse:
    s = services(request)
    claims = verified_claims(s, bearer_token(request), TokenType.REFRESH)
    pair = await s.db.write(lambda conn: sessions.rotate(conn, s.tokens, claims, time.time()))
    if pair is None:
        raise Unauthorized("The refresh token has been revoked.")
    return JSONResponse(_token_response(pair).model_dump())


async def logout(request: Request) -> JSONResponse:
    s = services(request)
    principal = await authenticate(request, s)
    family = principal.claims.family
    await s.db.write(lambda conn: sessions.revoke(conn, family, time.time()))
    message = f"User <id={principal.user.id}> successfully logged out."
    return JSONResponse(Message(message=message).model_dump())


def _token_response(pair: sessions.TokenPair) -> TokenResponse:
    access = pair.access.claims
    return TokenResponse(
        access_token=pair.access.token,
        refresh_token=pair.refresh.token,
        expires_in=access.expires_at - access.issued_at,
    )
