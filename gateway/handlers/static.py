"""Static files (being written: see the lead's brief)."""

from __future__ import annotations

from pathlib import Path

from gateway.errors import NotFound
from gateway.request import Request


class StaticHandler:
    def __init__(self, root: Path, cache_control: str) -> None:
        self.root = root
        self.cache_control = cache_control

    async def __call__(self, request: Request) -> None:
        raise NotFound("not written yet")
