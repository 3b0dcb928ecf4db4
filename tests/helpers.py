"""Small test utilities: waiting on conditions without sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the event loop until ``condition()`` holds (no wall-clock sleep).

    Conditions here are plain state of in-process servers with no event to await; yielding to
    the loop lets them make progress.
    """
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0)
