"""The replay source: order, pacing, corrupt lines and metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from finazon_trio.errors import RecordingError
from finazon_trio.events import Lifecycle, Received, Sent, SourceEvent
from finazon_trio.observe.metrics import SourceMetrics
from finazon_trio.recording import RecordingHeader, write_recording
from finazon_trio.source.replay import replay_source

HEADER = RecordingHeader(created_ns=0, url="wss://ws.finazon.io/v1", tickers=("AAPL",))
S = 1_000_000_000
T0 = 1_731_079_830 * S


def frame(i: int, t_ns: int) -> Received:
    return Received(t_ns, 1, f'{{"s":"AAPL","t":1731079800,"c":{200 + i}}}')


async def replay(
    path: Path, metrics: SourceMetrics, speed: float | None = None
) -> list[tuple[float, SourceEvent]]:
    """Replay ``path``; return what arrived downstream, each with the trio time it arrived."""
    send, receive = trio.open_memory_channel[SourceEvent](0)
    arrived: list[tuple[float, SourceEvent]] = []
    async with trio.open_nursery() as nursery:
        header = await nursery.start(replay_source, path, send, metrics, speed)
        assert header == HEADER
        async with receive:
            async for event in receive:
                arrived.append((trio.current_time(), event))
    return arrived


async def test_max_speed_delivers_every_frame_in_order(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "rec.jsonl"
    frames = [frame(i, T0 + i * S) for i in range(5000)]  # more than one read batch
    events: list[SourceEvent] = [
        Lifecycle(T0 - S, 1, "connected"),
        Sent(T0 - S + 1, 1, '{"event":"subscribe"}'),
        *frames[:2500],
        Lifecycle(T0 + 2500 * S, 1, "disconnected", "eof"),
        Lifecycle(T0 + 2501 * S, 2, "connected"),
        *frames[2500:],
    ]
    write_recording(path, HEADER, events)
    metrics = SourceMetrics()
    start = trio.current_time()

    arrived = await replay(path, metrics)

    assert [event for _, event in arrived] == [e for e in events if not isinstance(e, Sent)]
    assert {at for at, _ in arrived} == {start}  # flat out: no sleeping at all
    assert metrics.frames == len(frames)
    assert metrics.lines_read == metrics.lines_total == len(events) + 1
    assert metrics.corrupt_lines == 0
    assert metrics.state == "done"


async def test_speed_paces_by_recorded_gaps(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    path = tmp_path / "rec.jsonl"
    gaps = [0.0, 0.25, 1.5, 1.5, 4.0, 4.001, 10.0]
    events: list[SourceEvent] = [
        Lifecycle(T0 - 30 * S, 1, "connected"),  # before the first frame: sent at once
        *(frame(i, T0 + int(gap * S)) for i, gap in enumerate(gaps[:4])),
        Lifecycle(T0 + 3 * S, 1, "disconnected", "stale"),
        *(frame(i, T0 + int(gap * S)) for i, gap in enumerate(gaps[4:], start=4)),
    ]
    write_recording(path, HEADER, events)
    speed = 2.5
    start = trio.current_time()

    arrived = await replay(path, SourceMetrics(), speed)

    assert [event for _, event in arrived] == events
    expected = [start, *(start + (e.t_ns - T0) / S / speed for e in events[1:])]
    assert [at for at, _ in arrived] == pytest.approx(expected, abs=1e-9)
    assert trio.current_time() == pytest.approx(start + 10.0 / speed)


async def test_corrupt_lines_are_logged_counted_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "recording.jsonl"
    frames = [frame(i, T0 + i * S) for i in range(6)]
    write_recording(path, HEADER, frames)
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(3, b"garbage\n")  # line 4
    lines.insert(6, b'{"t_ns": 5}\n')  # line 7
    lines.append(lines[-1][:40])  # a truncated last line, as after a crash
    path.write_bytes(b"".join(lines))
    metrics = SourceMetrics()

    with caplog.at_level(logging.WARNING, logger="finazon_trio.source.replay"):
        arrived = await replay(path, metrics)

    assert [event for _, event in arrived] == frames
    assert metrics.corrupt_lines == 3
    assert metrics.lines_read == metrics.lines_total == len(lines) == 10
    messages = [record.getMessage() for record in caplog.records]
    assert f"{path}:4: corrupt line (not JSON) skipped" in messages
    assert f"{path}:7: corrupt line (t_ns or conn missing or not an integer) skipped" in messages
    assert f"{path}:10: truncated line skipped" in messages
    assert f"{path}: 3 corrupt lines skipped" in messages


async def test_a_bad_recording_fails_at_start_and_closes_the_channel(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b'{"format": "finazon-trio/recording", "version": 9}\n')
    send, receive = trio.open_memory_channel[SourceEvent](0)
    async with trio.open_nursery() as nursery:
        with pytest.raises(RecordingError, match="version 9"):
            await nursery.start(replay_source, path, send, SourceMetrics())
    with pytest.raises(trio.EndOfChannel):
        receive.receive_nowait()


async def test_cancelled_replay_says_stopped(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    path = tmp_path / "rec.jsonl"
    write_recording(path, HEADER, [frame(i, T0 + i * S) for i in range(10)])
    metrics = SourceMetrics()
    send, receive = trio.open_memory_channel[SourceEvent](0)
    async with trio.open_nursery() as nursery:
        await nursery.start(replay_source, path, send, metrics, 1.0)
        async with receive:
            for _ in range(3):
                await receive.receive()
            nursery.cancel_scope.cancel()
    assert metrics.state == "stopped"
    assert metrics.frames == 3
