"""Pure pacing policies of the live reader: reconnect backoff and the client event rate limit.

Neither reads a clock: the caller passes the times, so both are tested without trio or sockets.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from finazon_trio.errors import FinazonTrioError

#: The ceiling of the first retry's delay (seconds): full jitter draws it from ``[0, 1)``.
FIRST_RETRY = 1.0
#: A connection that delivered messages for this long (seconds) resets the backoff.
HEALTHY_AFTER = 60.0
#: Finazon allows about 100 client event messages per minute per connection; stay well under.
EVENTS_PER_WINDOW = 90
EVENT_WINDOW = 60.0


class RetriesExhaustedError(FinazonTrioError):
    """The connection failed more times in a row than ``--max-retries`` allows."""


class Backoff:
    """Exponential backoff with full jitter, for one connection slot.

    The n-th retry in a row waits ``random() * min(max_backoff, first * 2**(n-1))`` seconds. A
    connection that stayed healthy for ``healthy_after`` seconds starts the count again.
    ``max_retries=None`` retries forever.
    """

    def __init__(
        self,
        *,
        max_backoff: float,
        max_retries: int | None = None,
        first: float = FIRST_RETRY,
        healthy_after: float = HEALTHY_AFTER,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.max_backoff = max_backoff
        self.max_retries = max_retries
        self.first = first
        self.healthy_after = healthy_after
        self._jitter = jitter
        #: Consecutive failures since the last reset.
        self.failures = 0

    def next_delay(self, healthy_for: float) -> float | None:
        """Seconds to wait before the next attempt, after a connection (or an attempt) that
        stayed healthy for ``healthy_for`` seconds failed; None when no retry is left."""
        if healthy_for >= self.healthy_after:
            self.failures = 0
        if self.max_retries is not None and self.failures >= self.max_retries:
            return None
        ceiling = min(self.max_backoff, self.first * 2.0 ** min(self.failures, 64))
        self.failures += 1
        return self._jitter() * ceiling


class RateLimiter:
    """At most ``limit`` events in any ``window`` seconds: a sliding log of send times."""

    def __init__(self, limit: int = EVENTS_PER_WINDOW, window: float = EVENT_WINDOW) -> None:
        if limit < 1:
            raise ValueError("a rate limit needs at least one event per window")
        self.limit = limit
        self.window = window
        self._sent: deque[float] = deque()

    def next_allowed(self, now: float) -> float:
        """The earliest time (same clock as ``now``) at which the next event may go."""
        # ``sent + window <= now``, not ``sent <= now - window``: the same float arithmetic as
        # the answer below, so that an event sent at that answer finds its elder expired.
        while self._sent and self._sent[0] + self.window <= now:
            self._sent.popleft()
        if len(self._sent) < self.limit:
            return now
        return self._sent[-self.limit] + self.window

    def record(self, now: float) -> None:
        """Note an event sent at ``now``."""
        self._sent.append(now)
