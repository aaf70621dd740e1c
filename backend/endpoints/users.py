"""Reading and deleting users, and the admin's user directory (GET /users, POST /user)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import users
from ..auth import authenticate, require_admin, require_self_or_admin
from ..errors import NotFound
from ..inputs import path_user_id, query_int, read_json
from ..schemas import CreateUserRequest, DirectoryEntry, Message, UserOut, parse
from ..state import services

MAX_PAGE = 1000
MAX_OFFSET = 2**62


async def get_user(request: Request) -> JSONResponse:
    s = services(request)
    principal = await authenticate(request, s)
    user_id = path_user_id(request)
    # 403 before 404: a normal user must not learn which other ids exist.
    require_self_or_admin(principal, user_id)
    user = await s.db.read(lambda conn: users.get(conn, user_id))
    if user is None:
        raise NotFound("User not found.")
    return JSONResponse(UserOut(**user.public()).model_dump())


async def delete_user(request: Request) -> JSONResponse:
    s = services(request)
    principal = await authenticate(request, s)
    user_id = path_user_id(request)
    require_self_or_admin(principal, user_id)
    if not await s.db.write(lambda conn: users.delete(conn, user_id)):
        raise NotFound("User not found.")
    return JSONResponse(Message(message="User deleted.").model_dump())


async def list_users(request: Request) -> JSONResponse:
    s = services(request)
    require_admin(await authenticate(request, s))
    limit = query_int(request, "limit", default=100, low=1, high=MAX_PAGE)
    offset = query_int(request, "offset", default=0, low=0, high=MAX_OFFSET)
    page = await s.db.read(lambda conn: users.list_page(conn, limit=limit, offset=offset))
    return JSONResponse([UserOut(**user.public()).model_dump() for user in page])


async def create_user(request: Request) -> JSONResponse:
    s = services(request)
    require_admin(await authenticate(request, s))
    body = parse(CreateUserRequest, await read_json(request))
    entry = await s.db.write(
        lambda conn: users.create_directory_entry(conn, name=body.name, email=body.email)
    )
    response = DirectoryEntry(id=entry.id, name=body.name, email=entry.email)
    return JSONResponse(response.model_dump(), status_code=201)
