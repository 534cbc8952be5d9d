"""Messages Kafka did not take: kept in a JSONL file, and published again by ``republish``.

The publisher appends every message that finally failed (a permanent error, or not acknowledged
by the flush deadline) to the failed-messages file, in the format of :mod:`.message_log`, with
the error. ``finazon-trio republish FILE...`` publishes such files, and spool directories left
behind by a run that could not drain them, in order.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import trio

from finazon_trio.errors import FinazonTrioError
from finazon_trio.events import Message, Outgoing
from finazon_trio.sink.message_log import MessageLogError, batches, decode, encode, iter_file

logger = logging.getLogger(__name__)

#: Messages per ``Outgoing`` when a file is published again.
REPUBLISH_BATCH = 1000
#: ``Outgoing`` batches read per worker-thread call.
READ_BATCHES = 16


class FailedFile:
    """An append-only JSONL file of undelivered messages, created with the first one.

    :meth:`add` only buffers (any thread, the trio thread included); :meth:`write_pending`
    writes the buffer out (blocking: a worker thread or the publisher's poll thread).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        #: Messages written to the file so far.
        self.written = 0
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._write_lock = threading.Lock()

    def add(self, message: Message, error: str) -> None:
        line = encode(message, error=error)
        with self._lock:
            self._pending.append(line)

    def write_pending(self) -> None:
        """Append what :meth:`add` buffered. A write that fails is logged (with the number of
        messages it loses) rather than raised: the publisher must go on."""
        with self._write_lock:
            with self._lock:
                lines, self._pending = self._pending, []
            if not lines:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "ab") as file:
                    file.write(b"".join(lines))
            except OSError as exc:
                logger.error(
                    "cannot write %d undelivered messages to %s: %s", len(lines), self.path, exc
                )
                return
            if not self.written:
                logger.warning("undelivered messages go to %s", self.path)
            self.written += len(lines)


def message_files(paths: Sequence[Path]) -> list[Path]:
    """The files to publish, in order: each file as given; a directory's ``*.jsonl`` files in
    name order (a spool directory's segments). :class:`FinazonTrioError` if one is missing."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.jsonl")))
        elif path.is_file():
            files.append(path)
        else:
            raise FinazonTrioError(f"{path}: no such file or directory")
    return files


def new_run_id() -> str:
    """``<UTC time>-<pid>``: names this run's spool directory and failed-messages file."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"


def spool_path(spool_root: Path, run_id: str) -> Path:
    """The spool directory of run ``run_id`` (see :func:`left_behind`)."""
    return spool_root / f"live-{run_id}"


def failed_path(spool_root: Path, run_id: str) -> Path:
    """The default failed-messages file of run ``run_id`` (see :func:`left_behind`)."""
    return spool_root / f"failed-{run_id}.jsonl"


def left_behind(spool_root: Path) -> list[Path]:
    """What earlier runs left in ``spool_root`` for ``republish``, oldest first: spool
    directories (``live-<time>-<pid>``) that still hold segments, and non-empty failed-messages
    files (``failed-<time>-<pid>.jsonl``); those of processes still running are not counted.
    Blocking: run it in a thread."""
    found = [
        path
        for path in spool_root.glob("live-*")
        if path.is_dir() and any(path.glob("segment-*.jsonl"))
    ]
    found += [path for path in spool_root.glob("failed-*.jsonl") if path.stat().st_size]
    # By the run's start time; a run's failed messages come before its spool (republish order).
    return sorted(
        (path for path in found if not _running(path.name)),
        key=lambda path: (path.name.split("-")[1], path.is_dir()),
    )


def _running(name: str) -> bool:
    """Whether the process whose pid ends ``name`` (before any suffix) is alive."""
    pid = name.removesuffix(".jsonl").rpartition("-")[2]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def read_messages(files: Sequence[Path], corrupt: list[str]) -> Iterator[Outgoing]:
    """The messages of ``files`` in order, as ``Outgoing`` batches; lines that are not messages
    are skipped and described in ``corrupt`` (``path:line: why``)."""

    def lines() -> Iterator[Outgoing]:
        for path in files:
            for number, line in iter_file(path):
                try:
                    yield decode(line)
                except MessageLogError as exc:
                    corrupt.append(f"{path}:{number}: {exc}")

    yield from batches(lines(), REPUBLISH_BATCH)


async def feed(
    files: Sequence[Path], send: trio.MemorySendChannel[Outgoing], corrupt: list[str]
) -> None:
    """Send the messages of ``files`` down ``send`` in order (read in a worker thread), then
    close it."""
    batches_ = read_messages(files, corrupt)

    def next_batches() -> list[Outgoing]:
        return [batch for _, batch in zip(range(READ_BATCHES), batches_, strict=False)]

    async with send:
        while chunk := await trio.to_thread.run_sync(next_batches):
            for outgoing in chunk:
                await send.send(outgoing)
