"""Recording format v1: writer, reader and redaction (the Recorder stage is
``source/test_recorder.py``'s)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from finazon_trio import recording
from finazon_trio.errors import RecordingError
from finazon_trio.events import Lifecycle, Received, Sent, SourceEvent
from finazon_trio.recording import (
    Corrupt,
    encode_entry,
    header_from_settings,
    iter_entries,
    read_header,
    write_recording,
)
from finazon_trio.redaction import redact
from finazon_trio.settings import LiveSettings, Settings, Subscription

from .helpers.recording import EVENTS, HEADER, KEY


def test_write_and_read_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    assert write_recording(path, HEADER, EVENTS) == len(EVENTS) + 1
    assert read_header(path) == HEADER
    assert list(iter_entries(path)) == EVENTS


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
