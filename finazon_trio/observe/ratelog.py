"""Rate-limited warnings, for conditions that can repeat thousands of times a second."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    """Logs the first line at once, then at most one per ``interval`` seconds, saying how many
    were left out. Safe to call from any thread."""

    def __init__(
        self, logger: logging.Logger, interval: float, level: int = logging.WARNING
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._level = level
        self._lock = threading.Lock()
        self._next = 0.0
        self._skipped = 0

    def __call__(self, fmt: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._skipped += 1
                return
            skipped, self._skipped = self._skipped, 0
            self._next = now + self._interval
        if skipped:
            fmt += f" (and {skipped} more since the last report)"
        self._logger.log(self._level, fmt, *args)
