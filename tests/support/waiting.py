"""Waiting for something a test cannot make happen at once, with a bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Return once ``check()`` holds; fail the test if it does not within ``timeout``.

    For events that come on their own (a timer, a background fetch): a fixed
    sleep guesses how long they take, and a busy machine proves the guess wrong.
    """
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
