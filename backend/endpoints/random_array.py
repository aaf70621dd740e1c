"""POST /generate_random_array: the original demo endpoint, minus its 500s on bad input."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..auth import authenticate
from ..errors import PayloadTooLarge
from ..inputs import read_json
from ..schemas import (
    MAX_SENTENCE_CHARS,
    RANDOM_ARRAY_LENGTH,
    RandomArrayRequest,
    RandomArrayResponse,
    parse,
)
from ..state import services


async def generate_random_array(request: Request) -> JSONResponse:
    s = services(request)
    principal = await authenticate(request, s)
    body = parse(RandomArrayRequest, await read_json(request))
    if len(body.sentence) > MAX_SENTENCE_CHARS:
        raise PayloadTooLarge(f"The sentence is longer than {MAX_SENTENCE_CHARS} characters.")
    response = RandomArrayResponse(
        user=principal.user.username or principal.user.email,
        input_sentence=body.sentence,
        word_count=len(body.sentence.split()),
        random_array=[s.random.random() for _ in range(RANDOM_ARRAY_LENGTH)],
    )
    return JSONResponse(response.model_dump())
