"""Tasks run for their effect (a reload's clean-up, a certificate watch, a cache refresh).

The event loop keeps only a weak reference to a task: one that nobody holds can be garbage
collected before it finishes (asyncio's documentation of ``create_task``).  ``Background``
holds each until it is done, and stops them all on shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Background:
    __slots__ = ("tasks",)

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str | None = None) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def cancel_all(self) -> None:
        """Cancel what still runs and wait until it has ended."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self.tasks)
