"""The Recorder stage: it forwards every event unchanged, writes each to the recording (the key
redacted), and flushes at least once a second and when cancelled."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from finazon_trio.errors import RecordingError
from finazon_trio.events import Lifecycle, Received, Sent, SourceEvent
from finazon_trio.recording import RecordingHeader, iter_entries, read_header
from finazon_trio.source.recorder import Recorder

from ..helpers.recording import EVENTS, HEADER, KEY


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


async def record(
    path: Path,
    events: list[SourceEvent],
    header: RecordingHeader = HEADER,
    secrets: tuple[str, ...] = (),
) -> list[SourceEvent]:
    """Run a Recorder over ``events``; return what it forwarded."""
    in_send, in_receive = trio.open_memory_channel[SourceEvent](0)
    out_send, out_receive = trio.open_memory_channel[SourceEvent](0)
    forwarded: list[SourceEvent] = []

    async def collect() -> None:
        async with out_receive:
            async for event in out_receive:
                forwarded.append(event)

    async with trio.open_nursery() as nursery:
        await nursery.start(Recorder(path, header, secrets).run, in_receive, out_send)
        nursery.start_soon(collect)
        async with in_send:
            for event in events:
                await in_send.send(event)
    return forwarded


async def test_recorder_round_trip_forwards_everything(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    assert await record(path, EVENTS) == EVENTS
    assert read_header(path) == HEADER
    assert list(iter_entries(path)) == EVENTS
    assert path.read_bytes().endswith(b"\n")


async def test_the_key_never_reaches_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    url = f"wss://ws.finazon.io/v1?apikey={KEY}"
    header = RecordingHeader(created_ns=1, url=url, tickers=("AAPL",))
    events: list[SourceEvent] = [
        Lifecycle(1, 1, "connected", f"connected to {url}"),
        Sent(2, 1, f'{{"event":"subscribe","apikey":"{KEY}"}}'),
        Received(3, 1, f'{{"status":"error","message":"invalid api key {KEY}"}}'),
        Lifecycle(4, 1, "disconnected", f"handshake to {url}&x=1 failed: 401"),
    ]
    assert await record(path, events, header, secrets=(KEY,)) == events  # forwarded unchanged
    data = path.read_bytes()
    assert KEY.encode() not in data
    assert data.count(b"apikey=***") == 3
    assert read_header(path).url == "wss://ws.finazon.io/v1?apikey=***"


async def test_an_unwritable_path_fails_at_start(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "rec.jsonl"
    _, receive = trio.open_memory_channel[SourceEvent](0)
    send, _ = trio.open_memory_channel[SourceEvent](0)
    async with trio.open_nursery() as nursery:
        with pytest.raises(RecordingError, match=r"no-such-dir/rec\.jsonl: No such file"):
            await nursery.start(Recorder(path, HEADER).run, receive, send)


async def test_recorder_flushes_at_least_every_second(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "rec.jsonl"
    in_send, in_receive = trio.open_memory_channel[SourceEvent](0)
    out_send, out_receive = trio.open_memory_channel[SourceEvent](10)
    recorder = Recorder(path, HEADER)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run, in_receive, out_send)
        start = trio.current_time()
        assert len(lines_of(path)) == 1  # the header is on disk from the start
        await in_send.send(EVENTS[0])
        await in_send.send(EVENTS[1])
        await trio.sleep_until(start + 0.9)
        assert len(lines_of(path)) == 1  # buffered, not written line by line
        await trio.sleep_until(start + 1.05)
        assert len(lines_of(path)) == 3
        await in_send.send(EVENTS[2])
        await trio.sleep_until(start + 2.05)
        assert len(lines_of(path)) == 4
        assert recorder.lines_written == 4
        nursery.cancel_scope.cancel()
    out_receive.close()


async def test_recorder_flushes_on_cancellation(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "rec.jsonl"
    in_send, in_receive = trio.open_memory_channel[SourceEvent](0)
    out_send, out_receive = trio.open_memory_channel[SourceEvent](len(EVENTS))
    async with trio.open_nursery() as nursery:
        await nursery.start(Recorder(path, HEADER).run, in_receive, out_send)
        for event in EVENTS:
            await in_send.send(event)
        await trio.sleep(0.5)
        assert len(lines_of(path)) == 1
        nursery.cancel_scope.cancel()
    assert path.read_bytes().endswith(b"\n")
    assert list(iter_entries(path)) == EVENTS
    out_receive.close()
