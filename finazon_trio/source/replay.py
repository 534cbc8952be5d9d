"""The replay source: a recording's received frames, fed to the pipeline as the live run saw them.

It emits the recording's ``Received`` frames, ``Lifecycle`` events and REST answers of live
backfills (``RestResult``) in file order (so the transform detects and fills gaps as the live run
did) and skips the ``Sent`` frames.
Corrupt lines are logged with their line number, counted and skipped; the rest still replays.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import trio

from finazon_trio.events import Lifecycle, Received, RestResult, SourceEvent
from finazon_trio.observe.metrics import SourceMetrics, SourceState
from finazon_trio.recording import READ_CHUNK, Corrupt, RecordingHeader, iter_entries, read_header

logger = logging.getLogger(__name__)

#: Entries parsed per worker-thread call: large enough that the thread hop costs nothing.
BATCH_SIZE = 2048
#: Corrupt lines logged one by one; beyond this many they are only counted.
MAX_LOGGED_CORRUPT = 100


async def replay_source(
    path: Path,
    send: trio.MemorySendChannel[SourceEvent],
    metrics: SourceMetrics,
    speed: float | None = None,
    *,
    task_status: trio.TaskStatus[RecordingHeader] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send the recording's frames and lifecycle events down ``send``, then close it.

    ``speed=None`` runs flat out; ``speed=k`` keeps each event ``recorded gap / k`` seconds after
    the first received frame (events before that frame go at once). The file is read in a worker
    thread, batch by batch. Started with ``nursery.start``, it reports the recording's header once
    the header is checked (:class:`RecordingError` otherwise). Cancellation stops it between
    events, at the next wait: for room in ``send``, for the next batch of the file, or (at a
    set speed) for the next event's time; ``metrics.state`` then says ``stopped``, not ``done``.

    Metrics: ``lines_total`` (counted before starting) and ``lines_read`` both include the
    header, so ``lines_read == lines_total`` at the end; ``frames`` counts received frames sent
    on, ``corrupt_lines`` the lines skipped.
    """
    async with send:
        header, lines_total = await trio.to_thread.run_sync(_check_and_count, path)
        metrics.lines_total = lines_total
        metrics.lines_read = 1
        metrics.state = SourceState.REPLAYING
        task_status.started(header)
        entries = iter_entries(path)
        first_frame_ns: int | None = None
        start = 0.0
        try:
            while batch := await trio.to_thread.run_sync(_next_batch, entries):
                for entry in batch:
                    metrics.lines_read += 1
                    if isinstance(entry, Corrupt):
                        _report(path, entry, metrics)
                        continue
                    if not isinstance(entry, Received | Lifecycle | RestResult):
                        continue  # a Sent frame: what the client asked for, not data
                    if speed is not None:
                        if first_frame_ns is not None:
                            await trio.sleep_until(
                                start + (entry.t_ns - first_frame_ns) / 1e9 / speed
                            )
                        elif isinstance(entry, Received):
                            first_frame_ns, start = entry.t_ns, trio.current_time()
                    try:  # no schedule point per event while there is room: 5-10 us each
                        send.send_nowait(entry)
                    except trio.WouldBlock:
                        await send.send(entry)
                    if isinstance(entry, Received):
                        metrics.frames += 1
            metrics.state = SourceState.DONE
        finally:
            entries.close()
            if metrics.state != SourceState.DONE:
                metrics.state = SourceState.STOPPED
    if metrics.corrupt_lines:
        logger.warning("%s: %d corrupt lines skipped", path, metrics.corrupt_lines)


def _check_and_count(path: Path) -> tuple[RecordingHeader, int]:
    """The header, and the number of lines (a last line without a newline counts)."""
    header = read_header(path)
    lines = 0
    last = b"\n"
    with open(path, "rb") as file:
        while chunk := file.read(READ_CHUNK):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return header, lines + (last != b"\n")


def _next_batch(entries: Iterator[SourceEvent | Corrupt]) -> list[SourceEvent | Corrupt]:
    return list(itertools.islice(entries, BATCH_SIZE))


def _report(path: Path, corrupt: Corrupt, metrics: SourceMetrics) -> None:
    metrics.corrupt_lines += 1
    if metrics.corrupt_lines <= MAX_LOGGED_CORRUPT:
        logger.warning("%s:%d: %s skipped", path, corrupt.line_no, corrupt.reason)
    if metrics.corrupt_lines == MAX_LOGGED_CORRUPT:
        logger.warning("%s: further corrupt lines are counted but not logged", path)
