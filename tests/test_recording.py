"""Recording format v1: writer, reader, redaction and the Recorder stage's flushing."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from finazon_trio import recording
from finazon_trio.errors import RecordingError
from finazon_trio.events import Lifecycle, Received, Sent, SourceEvent
from finazon_trio.recording import (
    Corrupt,
    RecordingHeader,
    encode_entry,
    header_from_settings,
    iter_entries,
    read_header,
    write_recording,
)
from finazon_trio.redaction import redact
from finazon_trio.settings import LiveSettings, Settings, Subscription
from finazon_trio.source.recorder import Recorder

KEY = "fz_3b9Xq7LkP0secretKEY"
HEADER = RecordingHeader(
    created_ns=1_731_079_829_200_000_000,
    url="wss://ws.finazon.io/v1",
    dataset="binance",
    tickers=("BTC/USDT", "ETH/USDT"),
    frequency="10s",
)
EVENTS: list[SourceEvent] = [
    Lifecycle(1_000, 1, "connected"),
    Sent(1_001, 1, '{"event":"subscribe","tickers":["BTC/USDT"]}'),
    Received(1_002, 1, 'quotes " and \\ backslash, ünïcødé 📈, \u2028 separator, a\nnewline\ttab'),
    Received(1_003, 1, ""),
    Lifecycle(1_004, 1, "disconnected", "ping timeout (10 s) — reconnecting"),
    Received(1_005, 2, '{"s":"BTC/USDT","c":76000.5}'),
]


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """An autojump clock that waits 50 ms of real idleness before jumping, so it does not jump
    while the recorder's worker thread is still writing (a threshold of 0 would)."""
    return trio.testing.MockClock(autojump_threshold=0.05)


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


def test_write_and_read_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    assert write_recording(path, HEADER, EVENTS) == len(EVENTS) + 1
    assert read_header(path) == HEADER
    assert list(iter_entries(path)) == EVENTS


async def test_recorder_round_trip_forwards_everything(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    assert await record(path, EVENTS) == EVENTS
    assert read_header(path) == HEADER
    assert list(iter_entries(path)) == EVENTS
    assert path.read_bytes().endswith(b"\n")


def test_line_layout_matches_the_format() -> None:
    frame = orjson.loads(encode_entry(Received(5, 2, "x")))
    assert frame == {"t_ns": 5, "conn": 2, "dir": "in", "text": "x"}
    assert orjson.loads(encode_entry(Sent(5, 2, "y")))["dir"] == "out"
    event = orjson.loads(encode_entry(Lifecycle(6, 1, "disconnected", "eof")))
    assert event == {"t_ns": 6, "conn": 1, "event": "disconnected", "reason": "eof"}


def test_header_line_and_subscription(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    write_recording(path, HEADER, [])
    header = orjson.loads(path.read_bytes())
    assert header == {
        "format": "finazon-trio/recording",
        "version": 1,
        "created_ns": HEADER.created_ns,
        "source": {
            "url": "wss://ws.finazon.io/v1",
            "dataset": "binance",
            "tickers": ["BTC/USDT", "ETH/USDT"],
            "channel": "bars",
            "frequency": "10s",
            "aggregation": "1m",
        },
    }
    sub = read_header(path).subscription()
    assert sub == Subscription(dataset="binance", tickers=("BTC/USDT", "ETH/USDT"), frequency="10s")


def test_header_from_settings_redacts_the_key() -> None:
    settings = Settings(
        subscription=Subscription(tickers=("AAPL", "MSFT")), live=LiveSettings(api_key=KEY)
    )
    header = header_from_settings(settings, f"wss://ws.finazon.io/v1?apikey={KEY}")
    assert header.url == "wss://ws.finazon.io/v1?apikey=***"
    assert header.subscription() == settings.subscription
    assert header.created_ns > 1_700_000_000 * 10**9


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("wss://h/v1?apikey=abc123", "wss://h/v1?apikey=***"),
        ("wss://h/v1?apikey=abc&x=1", "wss://h/v1?apikey=***&x=1"),
        ("GET /v1?APIKEY=abc HTTP/1.1", "GET /v1?APIKEY=*** HTTP/1.1"),
        ('{"url": "wss://h?apikey=abc"}', '{"url": "wss://h?apikey=***"}'),
        (f"key {KEY} refused", "key *** refused"),
        ("nothing to hide", "nothing to hide"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text, [KEY, ""]) == expected


@given(st.text(), st.text(), st.sampled_from(["in", "out", "reason"]))
def test_no_event_can_carry_the_key_into_a_line(prefix: str, suffix: str, kind: str) -> None:
    text = prefix + KEY + suffix
    event: SourceEvent
    if kind == "in":
        event = Received(1, 1, text)
    elif kind == "out":
        event = Sent(1, 1, text)
    else:
        event = Lifecycle(1, 1, "disconnected", text)
    assert KEY.encode() not in encode_entry(event, [KEY])


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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\n\n", "is empty"),
        (b"hello\n", "not a finazon-trio recording: its first line is not a JSON header"),
        (b"[1, 2]\n", 'lacks "format": "finazon-trio/recording"'),
        (b'{"format": "other", "version": 1}\n', 'lacks "format"'),
        (b'{"format": "finazon-trio/recording", "version": 2}\n', "version 2; .* reads version 1"),
        (b'{"format": "finazon-trio/recording", "version": "1"}\n', "version '1'"),
        (b'{"format": "finazon-trio/recording", "version": 1}\n', 'no "source" object'),
        (
            b'{"format": "finazon-trio/recording", "version": 1, "source": {"tickers": "AAPL"}}',
            '"tickers" is not a list of strings',
        ),
        (
            b'{"format": "finazon-trio/recording", "version": 1, "source": {"url": 5}}',
            "'url' is not a str",
        ),
        (
            b'{"format": "finazon-trio/recording", "version": 1, "source": {"frequency": "soon"}}',
            "subscription is invalid: frequency 'soon'",
        ),
    ],
)
def test_header_errors_are_clear(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(RecordingError, match=message) as info:
        read_header(path)
    assert str(path) in str(info.value)
    with pytest.raises(RecordingError, match=message):
        next(iter_entries(path))


def test_a_missing_recording_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(RecordingError, match=rf"recording {path} not found"):
        read_header(path)
    with pytest.raises(RecordingError, match=rf"cannot read the recording {tmp_path}"):
        read_header(tmp_path)  # a directory


def test_corrupt_and_truncated_lines_are_reported_by_line_number(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    write_recording(path, HEADER, EVENTS)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2:2] = [b'{"t_ns": 1, "conn": 1, "dir": "in", "te\n']  # line 3
    lines[4:4] = [b"\n", b"[1]\n", b'{"t_ns": 1, "conn": 1}\n']  # lines 5-7
    lines[8:8] = [b'{"t_ns": 1, "conn": 1, "dir": "sideways", "text": ""}\n']  # line 9
    lines[9:9] = [b'{"t_ns": "1", "conn": 1, "dir": "in", "text": ""}\n']  # line 10
    lines[10:10] = [b'{"t_ns": 1, "conn": 1, "event": "connected", "reason": 3}\n']  # line 11
    lines.append(b'{"t_ns": 1731079830070474056, "conn": 1, "dir": "in", "text": "{\\"d')
    path.write_bytes(b"".join(lines))

    entries = list(iter_entries(path))
    corrupt = [entry for entry in entries if isinstance(entry, Corrupt)]
    assert [entry for entry in entries if not isinstance(entry, Corrupt)] == EVENTS
    assert [(c.line_no, c.reason.split(" (")[0]) for c in corrupt] == [
        (3, "corrupt line"),
        (5, "empty line"),
        (6, "corrupt line"),
        (7, "unknown entry"),
        (9, "unknown frame direction 'sideways'"),
        (10, "corrupt line"),
        (11, "corrupt line"),
        (len(lines), "truncated line"),
    ]
    assert len(entries) == len(lines) - 1  # one entry or report per line after the header


def test_a_last_line_without_newline_still_counts_if_whole(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    write_recording(path, HEADER, EVENTS)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert list(iter_entries(path)) == EVENTS


def test_lines_split_across_read_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rec.jsonl"
    write_recording(path, HEADER, EVENTS)
    for chunk in (1, 7, 64):
        monkeypatch.setattr(recording, "READ_CHUNK", chunk)
        assert list(iter_entries(path)) == EVENTS


def test_an_overlong_line_is_reported_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rec.jsonl"
    long = Received(9, 1, "x" * 5000)
    write_recording(path, HEADER, [EVENTS[0], long, EVENTS[1]])
    monkeypatch.setattr(recording, "READ_CHUNK", 256)
    monkeypatch.setattr(recording, "MAX_LINE_BYTES", 1024)
    entries = list(iter_entries(path))
    assert entries == [EVENTS[0], Corrupt(3, "line longer than 1,024 bytes"), EVENTS[1]]


_LINES = st.one_of(
    st.sampled_from([encode_entry(event).rstrip(b"\n") for event in EVENTS]),
    st.binary().map(lambda data: data.replace(b"\n", b"")),
)


@given(st.lists(_LINES), st.booleans())
def test_any_content_after_the_header_reads_line_for_line(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], final_newline: bool
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "rec.jsonl"
    body = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    path.write_bytes(recording.encode_header(HEADER) + body)
    entries = list(iter_entries(path))
    expected_count = len(lines) - (1 if lines and not final_newline and lines[-1] == b"" else 0)
    assert len(entries) == expected_count
    for line_no, (line, entry) in enumerate(zip(lines, entries, strict=False), start=2):
        if isinstance(entry, Corrupt):
            assert entry.line_no == line_no
        else:
            assert isinstance(orjson.loads(line), dict)
