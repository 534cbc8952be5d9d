"""The spool stage (live mode): transform → spool → publisher, so that frames never wait for Kafka.

While the publisher keeps up, each ``Outgoing`` goes straight through. When the publisher's
channel is full (Kafka is slow or away and the producer's local queue is full too), or before
:meth:`Spool.open` (Kafka has not answered yet at start), the spool queues what arrives instead,
and a drain task hands it to the publisher, oldest first, as fast as it takes it. The queue is
one FIFO: segment files on disk (oldest), the batch being written, then about
:data:`MAX_PENDING` messages in memory (newest). Memory is written out once
:data:`WRITE_BATCH` messages wait or the oldest has waited :data:`WRITE_DELAY` seconds, so a
hiccup that Kafka makes up for at once never touches the disk. Once anything is queued,
everything after it is queued too until the queue is empty, so the publisher receives exactly
the transform's order: per-symbol order holds across any outage.

Memory stays bounded whatever the backlog: at most :data:`MAX_PENDING` messages (and one more
``Outgoing``) wait to be written, the drain reads :data:`~.message_log.READ_CHUNK` bytes at a
time, the channels are bounded. Disk I/O runs in worker threads, in batches.

On disk: ``DIR/segment-00000001.jsonl``, ... in :mod:`.message_log`'s format (one ``Outgoing``
per line, in columns, with ``received_ns``). A segment is closed at :data:`SEGMENT_BYTES` and
deleted once drained; the directory goes when empty. A batch counts as spooled (the drain may
read it) once its write returns. By default that write is flushed to the OS, not fsynced: the
files survive a crash of this process, not of the machine (power loss, kernel panic), which
may lose the last seconds of them. With ``sync`` (``--spool-sync``) each write batch is fsynced,
and so is the directory whenever a segment is created, renamed or deleted, before it counts:
a machine crash then loses nothing that counted as spooled. The cost is one fsync per write
batch (up to :data:`WRITE_BATCH` messages), measured in ``benchmarks/README.md``.

At the end, the drain goes on until the backlog is empty or :meth:`Spool.give_up` is called
(the shutdown deadline). What is left then stays in DIR, rewritten to start at the first
message not handed over, for ``finazon-trio republish DIR``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import attrs
import trio

from finazon_trio.errors import FinazonTrioError
from finazon_trio.events import Outgoing
from finazon_trio.observe.metrics import PublisherMetrics
from finazon_trio.observe.ratelog import RateLimitedLog
from finazon_trio.sink.message_log import MessageLogError, decode, encode_batch, read_lines

logger = logging.getLogger(__name__)

#: A segment is closed (and a new one started) once it is this big.
SEGMENT_BYTES = 16 << 20
#: Messages waiting in memory to be written (256 frames); past this, the transform waits for
#: the disk.
MAX_PENDING = 256 * 91
#: Memory is written out once this many messages wait...
WRITE_BATCH = 64 * 91
#: ...or once the oldest has waited this long (seconds).
WRITE_DELAY = 0.5
#: While a backlog exists, its size is logged this often (seconds).
REPORT_INTERVAL = 10.0
#: Spooling started / backlog drained: at most one line per this many seconds.
TRANSITION_LOG_INTERVAL = 5.0


class SpoolError(FinazonTrioError):
    """The spool cannot write or read its files."""


@attrs.define
class _Segment:
    path: Path
    #: Bytes on disk (whole lines), read back, and handed to the publisher.
    written: int = 0
    read: int = 0
    sent: int = 0
    #: The writer has moved on to a newer segment.
    closed: bool = False


class Spool:
    """The stage between the transform and the publisher; see the module docstring.

    Writes ``backlog``, ``backlog_bytes``, ``spooled`` and ``spool_dir`` of ``metrics``.
    """

    def __init__(self, directory: Path, metrics: PublisherMetrics, *, sync: bool = False) -> None:
        self.directory = directory
        self.metrics = metrics
        self._open = False
        self._input_done = False
        self._gave_up = False
        self._drain_scope = trio.CancelScope()
        #: Messages taken in and not yet handed to the publisher.
        self._held = 0
        self._pending: list[Outgoing] = []
        self._pending_messages = 0
        self._writing = False
        self._segments: deque[_Segment] = deque()
        self._writer = SegmentWriter(directory, sync=sync)
        self._disk = trio.Lock()
        self._changed = trio.Event()
        self._spooling = False
        self._transitions = RateLimitedLog(logger, TRANSITION_LOG_INTERVAL, logging.INFO)

    def open(self) -> None:
        """Kafka answered: start handing messages to the publisher."""
        self._open = True
        self._notify()

    def give_up(self) -> None:
        """Stop handing the backlog over (the shutdown deadline, or Kafka never answered): what
        is left stays on disk."""
        self._gave_up = True
        self._drain_scope.cancel()
        self._notify()

    async def run(
        self, receive: trio.MemoryReceiveChannel[Outgoing], send: trio.MemorySendChannel[Outgoing]
    ) -> None:
        """Pass ``receive``'s batches on to ``send`` in order, through the disk when needed, until
        ``receive`` is closed and the backlog is handed over (or :meth:`give_up`); then close
        ``send``. Cancellation writes what is in memory to disk first."""
        async with send:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop)
                    nursery.start_soon(self._drain_loop, send)
                    nursery.start_soon(self._report_loop)
                    await self._accept(receive, send)
                    await self._until(lambda: not self._held or self._gave_up)
                    await self._until(lambda: not self._pending and not self._writing)
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await self._close()

    async def _accept(
        self, receive: trio.MemoryReceiveChannel[Outgoing], send: trio.MemorySendChannel[Outgoing]
    ) -> None:
        async with receive:
            async for outgoing in receive:
                if self._open and not self._held:
                    try:
                        send.send_nowait(outgoing)
                        continue
                    except trio.WouldBlock:
                        pass
                await self._until(lambda: self._pending_messages < MAX_PENDING)
                self._pending.append(outgoing)
                self._pending_messages += len(outgoing.messages)
                self._held += len(outgoing.messages)
                self.metrics.spooled += len(outgoing.messages)
                self._update()
        self._input_done = True
        self._notify()

    async def _write_loop(self) -> None:
        while True:
            await self._until(lambda: bool(self._pending) or self._input_done)
            with trio.move_on_after(WRITE_DELAY):  # the drain may take them from memory
                await self._until(
                    lambda: (
                        not self._pending
                        or self._pending_messages >= WRITE_BATCH
                        or self._input_done
                    )
                )
            if self._pending:
                await self._write_pending()
            elif self._input_done:
                return

    async def _write_pending(self) -> None:
        batch, self._pending, self._pending_messages = self._pending, [], 0
        self._writing = True
        self._notify()
        if not self._spooling:
            self._spooling = True
            self._transitions(
                "Kafka %s: spooling to %s",
                "is not keeping up" if self._open else "has not answered yet",
                self.directory,
            )
        try:
            # Shielded: a batch taken from memory is on disk, and accounted for, or raised.
            with trio.CancelScope(shield=True):
                async with self._disk:
                    path, size, closed = await trio.to_thread.run_sync(self._writer.append, batch)
        finally:
            self._writing = False
        if not self._segments or self._segments[-1].path != path:
            self._segments.append(_Segment(path))
            self.metrics.spool_dir = str(self.directory)
        segment = self._segments[-1]
        segment.written, segment.closed = size, closed
        self._update()

    async def _drain_loop(self, send: trio.MemorySendChannel[Outgoing]) -> None:
        with self._drain_scope:
            while True:
                await self._until(lambda: self._open and self._queued())
                segment = self._readable()
                if segment is None:  # nothing on disk or on its way there: the oldest is here
                    outgoing = self._pending.pop(0)
                    self._pending_messages -= len(outgoing.messages)
                    try:
                        await send.send(outgoing)
                    except BaseException:
                        self._pending.insert(0, outgoing)  # not handed over: still the oldest
                        self._pending_messages += len(outgoing.messages)
                        raise
                    self._handed_over(outgoing)
                    if not self._held:
                        await self._release()
                    continue
                chunk, segment.read = await trio.to_thread.run_sync(
                    read_back, segment.path, segment.read, segment.written
                )
                for outgoing, offset in chunk:
                    await send.send(outgoing)
                    segment.sent = offset
                    self._handed_over(outgoing)
                await self._release()

    def _queued(self) -> bool:
        """Whether the oldest queued batch can be handed over now (it is not being written)."""
        return self._readable() is not None or (bool(self._pending) and not self._writing)

    def _readable(self) -> _Segment | None:
        for segment in self._segments:
            if segment.read < segment.written:
                return segment
        return None

    def _handed_over(self, outgoing: Outgoing) -> None:
        self._held -= len(outgoing.messages)
        self._update()
        if not self._held and self._spooling:
            self._spooling = False
            self._transitions("spool backlog handed to Kafka; passing straight through")

    async def _release(self) -> None:
        """Delete the segments that are fully handed over, the open one too once the backlog
        is empty (the next write starts a new one)."""
        while self._segments and self._segments[0].sent == self._segments[0].written:
            segment = self._segments[0]
            with trio.CancelScope(shield=True):
                if not segment.closed:
                    async with self._disk:
                        if self._held or self._writing:  # more is on its way into it
                            return
                        await trio.to_thread.run_sync(self._writer.close)
                        segment.closed = True
                await trio.to_thread.run_sync(self._writer.remove, segment.path)
            self._segments.popleft()
            self._update()

    async def _report_loop(self) -> None:
        while True:
            await trio.sleep(REPORT_INTERVAL)
            if self._held:
                logger.warning(
                    "spool backlog: %d messages (%.1f MB in %s) waiting for Kafka",
                    self._held,
                    self.metrics.backlog_bytes / 1e6,
                    self.directory,
                )

    async def _close(self) -> None:
        """Write what is in memory, close the open segment, trim the one being drained to
        what was not handed over, delete the rest; say what is left."""
        try:
            if self._pending:
                await self._write_pending()
            async with self._disk:
                await trio.to_thread.run_sync(self._writer.close)
            for segment in self._segments:
                segment.closed = True
            await self._release()
            if self._segments:
                first = self._segments[0]
                if first.sent:
                    await trio.to_thread.run_sync(
                        _drop_head, first.path, first.sent, self._writer.sync
                    )
                    first.written -= first.sent
                    first.read = first.sent = 0
        except OSError as exc:
            raise SpoolError(f"cannot write the spool in {self.directory}: {exc}") from exc
        finally:
            self._update()
        if self._held:
            logger.error(
                "%d messages were not handed to Kafka; they are kept in %s: publish them with "
                "`finazon-trio republish %s`",
                self._held,
                self.directory,
                self.directory,
            )
        else:
            await trio.to_thread.run_sync(_remove_if_empty, self.directory)

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _update(self) -> None:
        self.metrics.backlog = self._held
        self.metrics.backlog_bytes = sum(s.written - s.sent for s in self._segments)
        self._notify()


class SegmentWriter:
    """Appends batches to the current segment file; used from one worker thread at a time.

    With ``sync``, each :meth:`append` returns only once the data, and a new segment's entry in
    the directory (and a new directory's in its parent), are on stable storage (fsync).
    """

    def __init__(self, directory: Path, *, sync: bool = False) -> None:
        self.directory = directory
        self.sync = sync
        self._file: BinaryIO | None = None
        self._path = directory
        self._size = 0
        self._number = 0

    def append(self, batch: list[Outgoing]) -> tuple[Path, int, bool]:
        """Write ``batch``; the segment written to, its size, and whether it is now closed."""
        data = b"".join(map(encode_batch, batch))
        try:
            created = False
            if self._file is None:
                if self.sync:
                    _make_durable_directory(self.directory)
                self.directory.mkdir(parents=True, exist_ok=True)
                self._number += 1
                self._path = self.directory / f"segment-{self._number:08d}.jsonl"
                self._file = open(self._path, "ab")  # noqa: SIM115 - kept open across calls
                self._size = 0
                created = True
            self._file.write(data)
            self._file.flush()
            if self.sync:
                os.fsync(self._file.fileno())
                if created:
                    sync_directory(self.directory)
        except OSError as exc:
            raise SpoolError(f"cannot write the spool in {self.directory}: {exc}") from exc
        self._size += len(data)
        path, size = self._path, self._size
        if size >= SEGMENT_BYTES:
            self.close()
        return path, size, self._file is None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self, path: Path) -> None:
        """Delete a drained segment (for good, with ``sync``: else a machine crash could bring
        it back, and ``republish`` would send it twice)."""
        path.unlink()
        if self.sync:
            sync_directory(self.directory)


def _make_durable_directory(directory: Path) -> None:
    """Create ``directory`` and any missing parents, each entry synced in its parent."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
        sync_directory(new.parent)


def sync_directory(directory: Path) -> None:
    """fsync a directory: the entries created, renamed or deleted in it are then durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_back(path: Path, offset: int, end: int) -> tuple[list[tuple[Outgoing, int]], int]:
    """The ``Outgoing`` batches of ``path`` from ``offset`` (about a chunk's worth, one a line),
    each with the offset after its line; and the offset reached."""
    lines, reached = read_lines(path, offset, end)
    out = []
    for line in lines:
        try:
            outgoing = decode(line)
        except MessageLogError as exc:
            raise SpoolError(f"{path}: corrupt spool line at byte {offset}: {exc}") from None
        offset += len(line) + 1
        out.append((outgoing, offset))
    return out, reached


def _drop_head(path: Path, offset: int, sync: bool = False) -> None:
    """Rewrite ``path`` without its first ``offset`` bytes (atomically, by renaming)."""
    partial = path.with_suffix(".partial")
    with open(path, "rb") as source, open(partial, "wb") as target:
        source.seek(offset)
        shutil.copyfileobj(source, target)
        if sync:
            target.flush()
            os.fsync(target.fileno())
    os.replace(partial, path)
    if sync:
        sync_directory(path.parent)


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):  # absent, or not empty
        directory.rmdir()
