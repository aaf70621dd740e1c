"""Request and response bodies as pydantic models, and validation errors as 400s.

Request models are strict (no "123" for a number, no number for a string) and forbid unknown
fields.  ``parse`` turns pydantic's errors into ``ValidationFailed`` with ``{field: [messages]}``.
The same models give ``openapi.py`` its JSON schemas, so the documentation cannot drift from
what is enforced.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from .errors import ValidationFailed

USERNAME_PATTERN = r"^[A-Za-z0-9._-]{3,80}$"
_USERNAME = re.compile(USERNAME_PATTERN)
MAX_SENTENCE_CHARS = 10_000
RANDOM_ARRAY_LENGTH = 500


def _username(value: str) -> str:
    if not _USERNAME.fullmatch(value):
        raise PydanticCustomError(
            "username", "Use 3 to 80 characters: letters, digits, '.', '_' or '-'."
        )
    return value


def _email(value: str) -> str:
    try:
        # No DNS lookups: deliverability is proven by the confirmation link instead.
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise PydanticCustomError("email", "{reason}", {"reason": str(exc)}) from None


def _person_name(value: str) -> str:
    if not all(c.isalpha() or c == " " for c in value) or value.isspace():
        raise PydanticCustomError("name", "Use letters and spaces only.")
    return value


Username = Annotated[
    str, Field(json_schema_extra={"pattern": USERNAME_PATTERN}), AfterValidator(_username)
]
Email = Annotated[
    str, Field(max_length=254, json_schema_extra={"format": "email"}), AfterValidator(_email)
]
Password = Annotated[str, Field(min_length=8, max_length=256)]
PersonName = Annotated[
    str,
    Field(min_length=3, max_length=50, description="letters and spaces"),
    AfterValidator(_person_name),
]


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RegisterRequest(RequestModel):
    username: Username
    email: Email
    password: Password


class LoginRequest(RequestModel):
    username: str = Field(min_length=1, max_length=320, description="username or e-mail")
    password: str = Field(min_length=1, max_length=256)


class CreateUserRequest(RequestModel):
    name: PersonName
    email: Email


class RandomArrayRequest(RequestModel):
    sentence: str = Field(description=f"at most {MAX_SENTENCE_CHARS} characters (else 413)")


class Message(BaseModel):
    message: str


class ErrorBody(BaseModel):
    message: str
    errors: dict[str, list[str]] | None = Field(
        default=None, description="validation errors by field"
    )


class UserOut(BaseModel):
    id: int
    username: str | None
    name: str | None
    email: str
    activated: bool
    role: Literal["user", "admin"]


class RegisteredUser(BaseModel):
    id: int
    username: str
    email: str
    activated: bool


class RegisterResponse(BaseModel):
    message: str
    user: RegisteredUser


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="seconds until the access token expires")


class DirectoryEntry(BaseModel):
    id: int
    name: str
    email: str


class RandomArrayResponse(BaseModel):
    user: str
    input_sentence: str
    word_count: int
    random_array: list[float] = Field(
        min_length=RANDOM_ARRAY_LENGTH,
        max_length=RANDOM_ARRAY_LENGTH,
        description="uniform in [0, 1)",
    )


class HealthResponse(BaseModel):
    status: Literal["ok", "error"]
    database: Literal["ok", "unreachable"]
    worker: int
    pid: int
    message: str | None = None


M = TypeVar("M", bound=BaseModel)

_MESSAGES = {
    "missing": "This field is required.",
    "extra_forbidden": "Unknown field.",
}


def field_errors(exc: ValidationError) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"]) or "body"
        errors.setdefault(field, []).append(_MESSAGES.get(error["type"], error["msg"]))
    return errors


def parse(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc)
        summary = "; ".join(f"{field}: {ms[0].rstrip('.')}" for field, ms in errors.items())
        raise ValidationFailed(errors, message=f"Invalid input: {summary}") from None
