"""The trio tasks that show the metrics: the dashboard redrawn on stderr a few times a second
(stdout stays clean), or a log line every few seconds when there is no terminal.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio
from rich.console import Console
from rich.file_proxy import FileProxy
from rich.live import Live

from finazon_trio.observe.dashboard import log_line, render
from finazon_trio.observe.metrics import Metrics
from finazon_trio.observe.stats import RateWindow, rate_counters

logger = logging.getLogger(__name__)

#: Redraws per second, and seconds between log lines when there is no terminal.
REFRESH_PER_SECOND = 4.0
LOG_INTERVAL = 5.0
#: Seconds of samples the rates average over (1 s updates arrive in bursts).
RATE_WINDOW = 5.0


class Sampler:
    """Takes snapshots for display: samples channel fill, then adds ``rates`` (per second)."""

    def __init__(self, metrics: Metrics, window: float = RATE_WINDOW) -> None:
        self._metrics = metrics
        self._rates = RateWindow(window)

    def take(self, now: float) -> dict[str, Any]:
        """A snapshot with ``snap["rates"]``. Call on the trio thread."""
        self._metrics.channels.sample()
        snap = self._metrics.snapshot()
        snap["rates"] = self._rates.update(now, rate_counters(snap))
        return snap


async def run_dashboard(
    metrics: Metrics,
    *,
    refresh_per_second: float = REFRESH_PER_SECOND,
    console: Console | None = None,
) -> None:
    """Redraw the dashboard on ``console`` (default: stderr) until cancelled.

    The snapshot and the renderable are made on the trio thread; drawing them (rich's costly
    part) happens in a worker thread, so the pipeline never waits for the terminal. Log lines
    bound for the same terminal are printed above the display instead of through it.
    Cancellation stops it between redraws and leaves the last frame on screen.
    """
    console = console if console is not None else Console(stderr=True)
    sampler = Sampler(metrics)
    live = Live(console=console, auto_refresh=False, redirect_stdout=False)
    with _logs_above(console), live:
        while True:
            now = time.time()
            frame = render(sampler.take(now), now, height=console.size.height)
            await trio.to_thread.run_sync(functools.partial(live.update, frame, refresh=True))
            await trio.sleep(1 / refresh_per_second)


async def run_log(metrics: Metrics, *, interval: float = LOG_INTERVAL) -> None:
    """Without a terminal: log :func:`log_line` every ``interval`` seconds until cancelled."""
    sampler = Sampler(metrics)
    while True:
        await trio.sleep(interval)
        now = time.time()
        logger.info("%s", log_line(sampler.take(now), now))


@contextmanager
def _logs_above(console: Console) -> Iterator[None]:
    """Point the root logger's handlers that write to the console's file through the console."""
    proxy = FileProxy(console, console.file)
    swapped = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream is console.file
    ]
    for handler in swapped:
        handler.setStream(proxy)
    try:
        yield
    finally:
        for handler in swapped:
            handler.setStream(proxy.rich_proxied_file)
