"""Gaps and backfill end to end: ``serve`` (WebSocket and REST) over real loopback sockets →
the live pipeline → a real broker, consumed back; then the recording replayed.

The server drops the client and refuses it for whole minutes of market time (``drop_for``,
with the time-lapse ``speed``), so the client misses them; its REST endpoint serves the same
market's minute bars, so what was backfilled can be compared with the server's bars.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from rich.console import Console

from finazon_trio.events import SourceEvent
from finazon_trio.observe.dashboard import log_line, render
from finazon_trio.observe.metrics import Metrics
from finazon_trio.observe.prometheus import families
from finazon_trio.pipeline import RunResult, run_pipeline
from finazon_trio.recording import header_from_settings, read_header, replay_settings
from finazon_trio.server.session import ServerLog
from finazon_trio.settings import (
    BackfillSettings,
    KafkaSettings,
    LiveSettings,
    Output,
    Settings,
    Subscription,
)
from finazon_trio.source.live import live_source
from finazon_trio.source.replay import replay_source
from tests.helpers.contract import expected_messages, valid_bar
from tests.helpers.kafka import Record, consume_all, consume_topics, unique_topic
from tests.helpers.server import server

KEY = "backfill-secret-5d1e"
TICKERS = ("AAPL", "MSFT")
#: Simulated seconds per real second.
SPEED = 60.0
POINTS = 5
RUN_TIMEOUT = 40.0
#: These runs take seconds each: against one broker (the embedded one, or the external one).
ONE_BROKER = pytest.mark.parametrize(
    "kafka_bootstrap",
    ["external" if os.environ.get("KAFKA_TEST_BOOTSTRAP") else "embedded"],
    indirect=True,
)


def outputs() -> Output:
    return Output(
        price_ticks_topic=unique_topic("bf-ticks"),
        volume_stream_topic=unique_topic("bf-volume"),
        gaps_topic=unique_topic("bf-gaps"),
        points=POINTS,
    )


def live_settings(
    port: int, log: ServerLog, bootstrap: str, output: Output, record: Path, **backfill: Any
) -> Settings:
    backfill.setdefault("calls_per_minute", 100)
    backfill.setdefault("enabled", True)
    return Settings(
        subscription=Subscription(tickers=TICKERS),
        output=output,
        kafka=KafkaSettings(endpoint=bootstrap),
        live=LiveSettings(url=f"ws://127.0.0.1:{port}/v1", api_key=KEY, max_backoff=0.2),
        backfill=BackfillSettings(rest_url=f"http://127.0.0.1:{log.rest_port}/latest", **backfill),
        record=record,
        dashboard=False,
    )


async def run_live(
    settings: Settings, stop: Callable[[Metrics], bool]
) -> tuple[RunResult, Metrics]:
    metrics = Metrics(mode="live")

    async def source(send: trio.MemorySendChannel[SourceEvent]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(live_source, settings, send, metrics.source))
            with trio.fail_after(RUN_TIMEOUT):
                while not stop(metrics):  # noqa: ASYNC110 - the condition is on metrics
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()

    header = header_from_settings(settings, settings.live.url)
    result = await run_pipeline(settings, source, metrics, header=header, handle_signals=False)
    assert result.ok, result
    return result, metrics


@contextlib.contextmanager
def http_logs() -> Iterator[io.StringIO]:
    """Everything httpx and httpcore log, at DEBUG, while the block runs."""
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
    try:
        yield text
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.removeHandler(handler)
            log.setLevel(level)


def recording_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


def message_counts(expected: dict[bytes, list[tuple[Any, int, bool]]]) -> tuple[int, int]:
    """How many price ticks and volume records ``expected`` holds."""
    ticks = sum(1 for v in expected.values() for m in v if "price" in m[0])
    return ticks, sum(len(v) for v in expected.values()) - ticks


def expected_with_backfill(
    lines: list[dict[str, Any]], output: Output
) -> dict[bytes, list[tuple[Any, int, bool]]]:
    """Per symbol, (value, timestamp, backfilled) of every record the contract gives: the
    received frames, with each backfill's minutes (from the recorded REST answers) as 1-minute
    updates at ``bar time + 60 s``, just before the bar that revealed the gap."""
    frames: dict[str, list[tuple[int, str, bool]]] = defaultdict(list)
    pending: dict[str, list[tuple[int, str, bool]]] = {}
    for entry in lines:
        if entry.get("dir") == "in":
            obj = json.loads(entry["text"])
            if valid_bar(obj):
                frames[obj["s"]].append((entry["t_ns"], entry["text"], False))
        elif "rest" in entry:
            rest = entry["rest"]
            bars: dict[int, dict[str, Any]] = {}
            for exchange in rest["exchanges"]:
                if exchange["status"] == 200:
                    for bar in json.loads(exchange["body"])["data"]:
                        bars.setdefault(bar["t"], bar)
            pending[rest["symbol"]] = [
                ((t + 60) * 10**9, json.dumps({**b, "s": rest["symbol"], "f": "1m"}), True)
                for t, b in sorted(bars.items())
            ]
    # Place each backfill before the first frame of the minute after its range.
    for entry in lines:
        if "rest" not in entry:
            continue
        symbol = entry["rest"]["symbol"]
        if not pending[symbol]:
            continue
        last = int(entry["rest"]["exchanges"][0]["params"]["end_at"])
        items = frames[symbol]
        at = next(i for i, (_, text, _) in enumerate(items) if json.loads(text)["t"] == last + 60)
        items[at:at] = pending.pop(symbol)
    out: dict[bytes, list[tuple[Any, int, bool]]] = {}
    for symbol, items in frames.items():
        messages = expected_messages(
            [(t_ns, text) for t_ns, text, _ in items],
            points=POINTS,
            price_topic=output.price_ticks_topic,
            volume_topic=output.volume_stream_topic,
        )
        flags = [flag for _, _, flag in items for _ in range(POINTS + 1)]
        assert len(messages) == len(flags)
        out[symbol.encode()] = [
            (m.value, m.timestamp, flag) for m, flag in zip(messages, flags, strict=True)
        ]
    return out


def by_key(records: list[Record]) -> dict[bytes, list[tuple[Any, int, bool]]]:
    got: dict[bytes, list[tuple[Any, int, bool]]] = defaultdict(list)
    for r in records:
        assert r.key is not None
        backfilled = r.headers == [("origin", b"backfill")]
        assert backfilled or r.headers == []
        got[r.key].append((json.loads(r.value), r.timestamp, backfilled))
    return got


async def server_bars(log: ServerLog, symbol: str) -> dict[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{log.rest_port}/finazon/us_stocks_essential/time_series"
    params = {"ticker": symbol, "order": "asc", "page_size": "1000"}
    async with httpx.AsyncClient() as client:
        response = await client.get(url, params=params, headers={"Authorization": f"apikey {KEY}"})
    assert response.status_code == 200
    return {bar["t"]: bar for bar in response.json()["data"]}


def answered(metrics: Metrics) -> bool:
    """Reconnected, and every symbol's backfill answered."""
    t = metrics.transform
    return metrics.source.connects >= 2 and t.backfills >= len(TICKERS) and not t.backfilling


@ONE_BROKER
async def test_a_drop_of_minutes_is_backfilled_in_order_and_replays_identically(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The server drops the client after 100 s of market time and refuses it for 200 s more:
    after the run, each symbol's volume stream has every minute from its first to its last;
    each backfilled minute is the server's bar; the ticks are the contract's for the
    backfilled updates; each symbol's records are in order in both topics; ``origin:
    backfill`` marks exactly the backfilled records; no gap record. The recording then
    replays to the identical records, headers included, without a key or a network."""
    output = outputs()
    record = tmp_path / "live.jsonl"
    async with server(rest_port=0, speed=SPEED, drop_every=100 / SPEED, drop_for=200) as (
        port,
        log,
    ):
        settings = live_settings(port, log, kafka_bootstrap, output, record)
        with http_logs() as logged:
            result, metrics = await run_live(settings, answered)
        bars = {symbol: await server_bars(log, symbol) for symbol in TICKERS}

    lines = recording_lines(record)
    assert KEY not in record.read_text()
    assert "time_series" in logged.getvalue()  # httpx logged its requests, without the key
    assert KEY not in logged.getvalue()
    assert sum("rest" in entry for entry in lines) == len(TICKERS)
    expected = expected_with_backfill(lines, output)
    ticks_count, volume_count = message_counts(expected)
    records = await consume_topics(
        kafka_bootstrap,
        {output.price_ticks_topic: ticks_count, output.volume_stream_topic: volume_count},
    )
    assert metrics.transform.gaps == 0
    assert result.delivered == ticks_count + volume_count
    ticks = by_key(records[output.price_ticks_topic])
    volumes = by_key(records[output.volume_stream_topic])
    for symbol in TICKERS:
        key = symbol.encode()
        want = expected[key]
        assert ticks[key] == [m for m in want if "price" in m[0]]
        assert volumes[key] == [m for m in want if "price" not in m[0]]
        minutes = [value["bar_time"] for value, _, _ in volumes[key]]
        assert minutes == sorted(minutes)  # never a bar after a newer one
        assert set(minutes) == set(range(minutes[0], minutes[-1] + 60, 60))
        filled = [value for value, _, backfilled in volumes[key] if backfilled]
        assert len(filled) >= 3  # the minute in progress at the drop, and 2 never seen
        for value in filled:
            bar = bars[symbol][value["bar_time"]]
            assert (value["open_price"], value["high_price"], value["low_price"]) == (
                bar["o"],
                bar["h"],
                bar["l"],
            )
            assert (value["close_price"], value["volume"]) == (bar["c"], bar["v"])
            assert value["timestamp"] == (value["bar_time"] + 60) * 1000

    # Counted in the Prometheus metrics and the dashboard, without the key.
    snapshot = metrics.snapshot()
    snapshot["rates"] = {}
    values = {s.name: s.value for f in families(snapshot) for s in f.samples}
    assert values["finazon_trio_backfilled_bars_total"] == metrics.transform.backfilled_bars
    assert values["finazon_trio_backfills_total"] == len(TICKERS)
    assert values["finazon_trio_gaps_total"] == 0
    assert values["finazon_trio_rest_calls_total"] == len(TICKERS)
    console = Console(width=140, record=True, file=io.StringIO())
    console.print(render(snapshot, time.time()))
    shown = console.export_text() + log_line(snapshot, time.time())
    assert f"{metrics.transform.backfilled_bars} min filled · 0 gaps" in shown
    assert KEY not in shown + repr(values)

    # The recording replays to the same records, headers included.
    replayed = outputs()
    header = read_header(record)
    assert header.backfill
    replay = replay_settings(
        Settings(output=replayed, kafka=KafkaSettings(endpoint=kafka_bootstrap), dashboard=False),
        header,
    )
    replay_metrics = Metrics()
    source = functools.partial(replay_source, record, metrics=replay_metrics.source)
    again = await run_pipeline(replay, source, replay_metrics, handle_signals=False)
    assert again.ok
    copies = await consume_topics(
        kafka_bootstrap,
        {replayed.price_ticks_topic: ticks_count, replayed.volume_stream_topic: volume_count},
    )
    for live_topic, replay_topic in [
        (output.price_ticks_topic, replayed.price_ticks_topic),
        (output.volume_stream_topic, replayed.volume_stream_topic),
    ]:
        assert [attrs.evolve(r, offset=0) for r in records[live_topic]] == [
            attrs.evolve(r, offset=0) for r in copies[replay_topic]
        ]


@ONE_BROKER
@pytest.mark.parametrize(
    ("faults", "backfill", "reason"),
    [
        pytest.param({"rest_reject_auth": True}, {}, "unauthorized", id="refused"),
        pytest.param({"rest_failure_rate": 1.0}, {}, "unavailable", id="failing"),
        pytest.param({"rest_delay": 3.0}, {"timeout": 1.0}, "timeout", id="slow"),
        pytest.param({"rest_rate_limit": 1}, {"timeout": 1.0}, "rate_limited", id="429"),
        pytest.param({}, {"timeout": 1.0, "calls_per_minute": 1}, "rate_limited", id="budget"),
    ],
)
async def test_what_rest_cannot_fill_becomes_gap_records(
    kafka_bootstrap: str,
    tmp_path: Path,
    faults: dict[str, Any],
    backfill: dict[str, Any],
    reason: str,
) -> None:
    """REST refused, failing, slow past the timeout, rate-limited past the budget: the missing
    range of each symbol (or of all but the one the budget allowed) becomes one gap record with
    the reason; live frames wait no longer than the timeout, and nothing else is lost."""
    output = outputs()
    record = tmp_path / "live.jsonl"
    async with server(rest_port=0, speed=SPEED, drop_every=100 / SPEED, drop_for=150, **faults) as (
        port,
        log,
    ):
        settings = live_settings(port, log, kafka_bootstrap, output, record, **backfill)

        _, metrics = await run_live(settings, answered)

    lines = recording_lines(record)
    rests = [entry["rest"] for entry in lines if "rest" in entry]
    assert len(rests) == len(TICKERS)
    gaps = consume_all(kafka_bootstrap, output.gaps_topic, metrics.transform.gaps)
    values = [json.loads(g.value) for g in gaps]
    assert {v["reason"] for v in values} == {reason}
    for value in values:
        assert set(value) == {
            "symbol",
            "first_missing",
            "last_missing",
            "reason",
            "dataset",
            "detected_at",
        }
        # From the bar in progress at the drop to the minute before the first one after it.
        times = [
            (e["conn"], json.loads(e["text"]).get("t"))
            for e in lines
            if e.get("dir") == "in" and f'"s":"{value["symbol"]}"' in e["text"]
        ]
        before = max(t for conn, t in times if conn == 1)
        after = min(t for conn, t in times if conn > 1)
        assert (value["first_missing"], value["last_missing"]) == (before, after - 60)
        assert value["last_missing"] - value["first_missing"] >= 60
        assert value["dataset"] == "us_stocks_essential"
    # Past the budget (or the server's limit) of one call: one symbol filled, the other a gap.
    assert len(values) == len(TICKERS) - (reason == "rate_limited")
    # Live bars waited for the answer no longer than the timeout (and a little scheduling).
    timeout = settings.backfill.timeout
    for entry in lines:
        if "rest" in entry:
            symbol = entry["rest"]["symbol"]
            held_from = next(
                e["t_ns"]
                for e in lines
                if e.get("dir") == "in" and symbol in e["text"] and e["conn"] > 1
            )
            assert entry["t_ns"] - held_from < (timeout + 0.5) * 1e9
    expected = expected_with_backfill(lines, output)
    ticks_count, volume_count = message_counts(expected)
    records = await consume_topics(
        kafka_bootstrap,
        {output.price_ticks_topic: ticks_count, output.volume_stream_topic: volume_count},
    )
    assert by_key(records[output.volume_stream_topic]) == {
        key: [m for m in v if "price" not in m[0]] for key, v in expected.items()
    }


@ONE_BROKER
async def test_garbage_from_rest_is_rejected_counted_and_reported(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """REST answers 200 with malformed bodies (wrong shapes, missing fields, bars outside the
    range, duplicates, out of order): the run goes on; bad bars are counted; every minute from
    each symbol's first to last is either in the volume stream or in a gap record; each
    symbol's bars stay in order."""
    output = outputs()
    faults = {"drop_every": 100 / SPEED, "drop_for": 150, "rest_garbage_rate": 1.0, "seed": 4}
    async with server(rest_port=0, speed=SPEED, **faults) as (port, log):
        settings = live_settings(port, log, kafka_bootstrap, output, tmp_path / "live.jsonl")
        result, metrics = await run_live(settings, answered)
    assert metrics.transform.rest_rejects + metrics.transform.backfilled_bars > 0
    volumes = consume_all(kafka_bootstrap, output.volume_stream_topic, metrics.transform.bars)
    gaps = consume_all(kafka_bootstrap, output.gaps_topic, metrics.transform.gaps)
    assert result.delivered == (POINTS + 1) * metrics.transform.bars + len(gaps)
    for symbol in TICKERS:
        minutes = [json.loads(r.value)["bar_time"] for r in volumes if r.key == symbol.encode()]
        assert minutes == sorted(minutes)
        covered = set(minutes)
        for gap in map(json.loads, (r.value for r in gaps if r.key == symbol.encode())):
            covered |= set(range(gap["first_missing"], gap["last_missing"] + 60, 60))
        assert covered == set(range(minutes[0], minutes[-1] + 60, 60))
