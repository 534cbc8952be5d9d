"""Waiting for what another task, thread or process brings about: bounded, and failing with a
message that says what did not happen, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

#: Real seconds a condition may take to hold (a cold interpreter on a busy machine).
WAIT_TIMEOUT = 60.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT) -> None:
    """Block until ``condition()`` holds; fail the test, saying ``what``, after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


async def until(
    condition: Callable[[], bool],
    what: str,
    timeout: float = WAIT_TIMEOUT,  # noqa: ASYNC109 - a test step's bound, with a message
    poll: float = 0.05,
) -> None:
    """Return once ``condition()`` holds, checking every ``poll`` seconds; fail the test,
    saying ``what``, after ``timeout``."""
    with trio.move_on_after(timeout):
        while not condition():  # noqa: ASYNC110 - conditions on metrics, files and processes
            await trio.sleep(poll)
        return
    raise AssertionError(f"not within {timeout:g} s: {what}")
