"""Recording format: the ``rest`` entries of live backfills and the header's ``backfill`` flag,
next to recordings made before them."""

from __future__ import annotations

import json
from pathlib import Path

from finazon_trio.events import HttpExchange, Lifecycle, Received, RestResult
from finazon_trio.recording import (
    Corrupt,
    RecordingHeader,
    encode_header,
    iter_entries,
    read_header,
    replay_settings,
    write_recording,
)
from finazon_trio.settings import Settings

from .helpers.paths import SAMPLE

KEY = "fz_rest_secret_77"
HEADER = RecordingHeader(created_ns=1, url="wss://ws.finazon.io/v1", tickers=("AAPL",))
RESULT = RestResult(
    5_000,
    3,
    "AAPL",
    (
        HttpExchange(
            4_000,
            "/finazon/us_stocks_essential/time_series",
            {"ticker": "AAPL", "start_at": "60", "end_at": "120", "note": f"apikey={KEY}"},
            200,
            f'{{"data": [], "echo": "{KEY}"}}',
        ),
        HttpExchange(4_500, "/p/d/time_series", {"ticker": "AAPL"}, error="timeout"),
    ),
    "timeout",
)


def test_rest_entries_round_trip_without_the_key(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    events = [Lifecycle(1, 1, "connected"), RESULT, Received(6_000, 1, "{}")]
    write_recording(path, HEADER, events, secrets=(KEY,))
    assert KEY not in path.read_text()
    entries = list(iter_entries(path))
    assert entries[0] == events[0]
    assert entries[2] == events[2]
    got = entries[1]
    assert isinstance(got, RestResult)
    assert (got.t_ns, got.backfill, got.symbol, got.error) == (5_000, 3, "AAPL", "timeout")
    assert got.exchanges[0].params["note"] == "apikey=***"
    assert got.exchanges[0].body == '{"data": [], "echo": "***"}'
    assert got.exchanges[1] == RESULT.exchanges[1]
    line = json.loads(path.read_text().splitlines()[2])
    assert set(line) == {"t_ns", "rest"}
    assert line["rest"]["exchanges"][0]["method"] == "GET"


def test_the_backfill_flag_is_written_only_when_set() -> None:
    """A run without backfill writes the header as before; one with it adds ``backfill``."""
    plain = json.loads(encode_header(HEADER))
    assert "backfill" not in plain
    flagged = json.loads(encode_header(RecordingHeader(created_ns=1, url="x", backfill=True)))
    assert flagged["backfill"] is True


def test_older_recordings_replay_without_backfill(tmp_path: Path) -> None:
    header = read_header(SAMPLE)
    assert not header.backfill
    assert not replay_settings(Settings(), header).backfill.enabled
    path = tmp_path / "new.jsonl"
    write_recording(path, RecordingHeader(created_ns=1, url="x", backfill=True), [])
    assert replay_settings(Settings(), read_header(path)).backfill.enabled


def test_bad_rest_entries_and_unknown_kinds_are_corrupt_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    lines = [
        {"t_ns": 1, "rest": {"backfill": "one", "symbol": "AAPL", "exchanges": []}},
        {"t_ns": 1, "rest": {"backfill": 1, "symbol": "AAPL", "exchanges": [{"t_ns": 1}]}},
        {"t_ns": 1, "rest": []},
        {"t_ns": 1, "conn": 1, "quote": {"s": "AAPL"}},
    ]
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    path.write_bytes(encode_header(HEADER) + body)
    entries = list(iter_entries(path))
    assert [type(entry) for entry in entries] == [Corrupt] * 4
    assert [entry.reason for entry in entries if isinstance(entry, Corrupt)] == [
        "corrupt REST entry",
        "corrupt REST entry",
        "corrupt REST entry",
        "unknown entry (neither a frame nor a lifecycle event)",
    ]
