"""Fixtures of the source tests."""

from __future__ import annotations

import pytest
import trio
import trio.testing


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """An autojump clock that waits 50 ms of real idleness before jumping, so it never jumps
    while a worker thread (the recorder's writer, the replay's reader) is still at work (a
    threshold of 0 would)."""
    return trio.testing.MockClock(autojump_threshold=0.05)
