"""The optional recorder stage: every source event to a recording, then passed on."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import trio

from finazon_trio.events import SourceEvent
from finazon_trio.recording import RecordingHeader, encode_entry, encode_header, write_error

logger = logging.getLogger(__name__)

#: The recorder writes what it buffered at least this often (seconds).
FLUSH_INTERVAL = 1.0
#: The final write on exit gives up after this long (seconds), so shutdown stays bounded.
CLOSE_TIMEOUT = 5.0
#: The recorder writes early once this much is buffered, so a slow disk cannot eat memory.
MAX_BUFFERED_BYTES = 8 << 20
#: What to do when the recording cannot be created.
CREATE_HINT = "; choose a path (--record) in a directory that exists and can be written"


class Recorder:
    """The optional pipeline stage that writes every event to a recording and passes it on.

    Lines are buffered in memory and written by a worker thread at least every
    :data:`FLUSH_INTERVAL` seconds and on exit, so a crash loses at most the last second and
    the file always ends with a whole line (unless the process dies inside a write).
    """

    def __init__(self, path: Path, header: RecordingHeader, secrets: Sequence[str] = ()) -> None:
        self.path = path
        self.header = header
        self._secrets = tuple(secret for secret in secrets if secret)
        self._buffer: list[bytes] = []
        self._buffered_bytes = 0
        self._lock = trio.Lock()  # one write at a time, in buffer order
        #: Lines on disk so far, the header included.
        self.lines_written = 0

    async def run(
        self,
        receive: trio.MemoryReceiveChannel[SourceEvent],
        send: trio.MemorySendChannel[SourceEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Record and forward events until ``receive`` ends; then write the rest and close.

        Started with ``nursery.start``: the file is created and its header written first, so a
        path that cannot be written fails there with :class:`RecordingError`. On cancellation
        the buffered lines are still written, within :data:`CLOSE_TIMEOUT` seconds.
        """
        file = await trio.to_thread.run_sync(self._create)
        self.lines_written = 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._flush_periodically, file)
                task_status.started()
                async with receive, send:
                    async for event in receive:
                        line = encode_entry(event, self._secrets)
                        self._buffer.append(line)
                        self._buffered_bytes += len(line)
                        if self._buffered_bytes >= MAX_BUFFERED_BYTES:
                            await self._flush(file)
                        await send.send(event)
                nursery.cancel_scope.cancel()
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True) as scope:
                await self._flush(file, close=True)
            if scope.cancelled_caught:
                logger.error(
                    "the recording %s was not closed within %ss: its last second may be missing",
                    self.path,
                    CLOSE_TIMEOUT,
                )

    def _create(self) -> BinaryIO:
        try:
            file = open(self.path, "wb")  # noqa: SIM115 (closed by run's final flush)
        except OSError as exc:
            raise write_error(self.path, exc, CREATE_HINT) from exc
        try:
            file.write(encode_header(self.header, self._secrets))
            file.flush()
        except OSError as exc:
            file.close()
            raise write_error(self.path, exc) from exc
        return file

    async def _flush_periodically(self, file: BinaryIO) -> None:
        deadline = trio.current_time()
        while True:
            deadline += FLUSH_INTERVAL
            await trio.sleep_until(deadline)
            await self._flush(file)

    async def _flush(self, file: BinaryIO, *, close: bool = False) -> None:
        async with self._lock:
            lines, self._buffer, self._buffered_bytes = self._buffer, [], 0
            if not lines and not close:
                return
            # Only the final write may be abandoned (on timeout): nothing writes after it.
            await trio.to_thread.run_sync(
                _write, file, b"".join(lines), self.path, close, abandon_on_cancel=close
            )
            self.lines_written += len(lines)


def _write(file: BinaryIO, data: bytes, path: Path, close: bool) -> None:
    try:
        file.write(data)
        file.flush()
        if close:
            os.fsync(file.fileno())
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        if close:
            file.close()
