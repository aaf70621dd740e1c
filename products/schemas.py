"""Products in and out: pydantic models, and ``price`` as an exact decimal string.

A price is money, so it never passes through a float: the JSON value must be a string such as
``"19.99"`` (a JSON number is refused, since the client's parser may already have rounded it),
non-negative, with at most two decimals.  It is stored as integer cents.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

MAX_CENTS = 10**13 - 1  # 99,999,999,999.99: well inside a 64-bit integer
MAX_STOCK = 2**31 - 1
PRICE_PATTERN = r"^[0-9]{1,11}(\.[0-9]{1,2})?$"
_PRICE = re.compile(PRICE_PATTERN)


def parse_price(value: str) -> int:
    """``"19.99"`` -> 1999 cents; PydanticCustomError (a 400 for ``price``) otherwise."""
    text = value.strip()
    if text.startswith("-"):
        raise PydanticCustomError("price", "The price must not be negative.")
    if not _PRICE.fullmatch(text):
        if re.fullmatch(r"[0-9]+\.[0-9]{3,}", text):
            raise PydanticCustomError("price", 'Use at most two decimals, e.g. "19.99".')
        raise PydanticCustomError("price", 'Use a decimal number as a string, e.g. "19.99".')
    return int(Decimal(text) * 100)


def format_price(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _price_is_a_string(value: object) -> object:
    if not isinstance(value, str):
        raise PydanticCustomError(
            "price", 'Send the price as a string, e.g. "19.99" (a JSON number may be rounded).'
        )
    return value


Price = Annotated[
    str,
    BeforeValidator(_price_is_a_string),
    Field(
        description='a decimal string with at most two decimals, e.g. "19.99"',
        json_schema_extra={"pattern": PRICE_PATTERN},
    ),
    AfterValidator(lambda value: format_price(parse_price(value))),
]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Description = Annotated[str, Field(max_length=5000)]
Stock = Annotated[int, Field(ge=0, le=MAX_STOCK)]


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ProductIn(RequestModel):
    name: Name
    description: Description = ""
    price: Price
    stock: Stock


class ProductPatch(RequestModel):
    name: Name | None = None
    description: Description | None = None
    price: Price | None = None
    stock: Stock | None = None


class ProductOut(BaseModel):
    id: int
    name: str
    description: str
    price: str = Field(description='a decimal string, e.g. "19.99"')
    stock: int


class ProductsHealth(BaseModel):
    status: str
    database: str
    pid: int
    message: str | None = None
