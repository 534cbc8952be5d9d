"""Rate-limited log lines, for conditions that can repeat thousands of times a second."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable


class RateLimitedLog:
    """Logs the first ``first`` lines of each key at once, then at most one per ``interval``
    seconds, saying how many were left out. Safe to call from any thread."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        level: int = logging.WARNING,
        *,
        first: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._level = level
        self._first = first
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: Counter[str] = Counter()
        self._skipped: Counter[str] = Counter()
        self._next: dict[str, float] = {}

    def __call__(self, fmt: str, *args: object, key: str = "") -> None:
        """Log ``fmt % args`` unless ``key`` was logged less than ``interval`` seconds ago."""
        with self._lock:
            now = self._clock()
            self._seen[key] += 1
            if self._seen[key] > self._first and now < self._next[key]:
                self._skipped[key] += 1
                return
            self._next[key] = now + self._interval
            skipped = self._skipped.pop(key, 0)
        if skipped:
            fmt += f" ({skipped} more{' ' + key if key else ''} since the last report)"
        self._logger.log(self._level, fmt, *args)
