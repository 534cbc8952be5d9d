"""Replay through the whole pipeline into a real broker, consume it back, check the contract."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from finazon_trio import FinazonMarketDataProducer
from finazon_trio.observe.metrics import Metrics
from finazon_trio.pipeline import run_pipeline
from finazon_trio.recording import read_header
from finazon_trio.server.synthetic import generate_recording
from finazon_trio.settings import KafkaSettings, Output, Settings
from finazon_trio.source.replay import replay_source

from .helpers.cli import run_cli
from .helpers.contract import (
    assert_topic_matches,
    by_topic,
    expect,
    expected_messages,
    received_frames,
)
from .helpers.kafka import consume_all, unique_output, unique_topic
from .helpers.paths import SAMPLE

T0 = 1_731_080_000  # a Unix second; bars of the hand-made recordings start here


def write_recording(path: Path, lines: list[str | dict[str, object]]) -> Path:
    header = {
        "format": "finazon-trio/recording",
        "version": 1,
        "created_ns": T0 * 10**9,
        "source": {
            "url": "wss://ws.finazon.io/v1",
            "dataset": "us_stocks_essential",
            "tickers": ["AAPL", "MSFT"],
            "channel": "bars",
            "frequency": "1s",
            "aggregation": "1m",
        },
    }
    body = [json.dumps(header)] + [x if isinstance(x, str) else json.dumps(x) for x in lines]
    path.write_text("\n".join(body) + "\n")
    return path


def frame_line(second: float, text: str) -> dict[str, object]:
    return {"t_ns": int(second * 1e9), "conn": 1, "dir": "in", "text": text}


def bar(s: str, t: int, o: float, h: float, low: float, c: float, v: float, **extra: object) -> str:
    fields: dict[str, object] = {"d": "us_stocks_essential", "p": "finazon", "ch": "bars"}
    fields |= {"f": "1s", "aggr": "1m", "s": s, "t": t, "o": o, "h": h, "l": low, "c": c, "v": v}
    return json.dumps(fields | extra)


async def replay(path: Path, bootstrap: str, output: Output, **kafka: object) -> Metrics:
    header = read_header(path)
    settings = Settings(
        subscription=header.subscription(),
        output=output,
        kafka=KafkaSettings(endpoint=bootstrap, **kafka),  # type: ignore[arg-type]
        dashboard=False,
    )
    metrics = Metrics()
    source = functools.partial(replay_source, path, metrics=metrics.source)
    result = await run_pipeline(settings, source, metrics, handle_signals=False)
    assert result.ok, result
    return metrics


@pytest.fixture
def topics() -> Output:
    return unique_output("e2e", dead_letter_topic=unique_topic("e2e-dead"))


async def test_replay_of_a_generated_recording_publishes_the_contract(
    kafka_bootstrap: str, tmp_path: Path, topics: Output
) -> None:
    path = generate_recording(
        tmp_path / "rec.jsonl", ["AAPL", "MSFT", "BRK.B"], minutes=2, seed=3, start_s=T0 + 45
    )
    await replay(path, kafka_bootstrap, topics, partitions=3)

    expected = expect(path, topics)
    ticks = by_topic(expected, topics.price_ticks_topic)
    volumes = by_topic(expected, topics.volume_stream_topic)
    assert len(volumes) == 3 * 120  # one per ticker per second
    assert len(ticks) == 90 * len(volumes)
    assert_topic_matches(consume_all(kafka_bootstrap, topics.price_ticks_topic, len(ticks)), ticks)
    assert_topic_matches(
        consume_all(kafka_bootstrap, topics.volume_stream_topic, len(volumes)), volumes
    )


async def test_bad_frames_are_rejected_counted_and_dead_lettered(
    kafka_bootstrap: str, tmp_path: Path, topics: Output
) -> None:
    t = T0
    good = [
        frame_line(t + 0.1, bar("AAPL", t, 100, 101, 99, 100.5, 10)),
        frame_line(t + 1.1, bar("AAPL", t, 100, 102, 99, 101.25, 15)),
        frame_line(
            t + 2.1,
            json.dumps(
                {
                    "ch": "bars",
                    "data": [
                        json.loads(bar("MSFT", t, 50, 51, 49, 50.5, 7)),
                        {"s": "MSFT", "t": t, "o": 50},  # missing fields, between two good ones
                        json.loads(bar("AAPL", t, 100, 102, 98, 98.5, 20)),
                    ],
                }
            ),
        ),
        frame_line(t + 60.1, bar("AAPL", t + 60, 98.5, 99, 98, 98.75, 3)),
    ]
    bad = [
        frame_line(t + 0.5, "not json at all"),
        frame_line(t + 0.6, "[1, 2, 3]"),
        frame_line(t + 0.7, bar("AAPL", t, 100, 99, 101, 100, 1)),  # h < l
        frame_line(t + 0.8, bar("AAPL", t, 100, 101, 99, 105, 1)),  # c above h
        frame_line(t + 0.9, bar("AAPL", t, 100, 101, 99, 100, -1)),  # negative volume
        frame_line(t + 60.5, bar("AAPL", t, 100, 101, 99, 100, 30)),  # stale: older bar
    ]
    protocol = [
        frame_line(t, json.dumps({"status": "success", "code": "SUCCESS_SUBSCRIPTION"})),
        frame_line(t + 30, json.dumps({"event": "heartbeat", "status": "success"})),
    ]
    lines = sorted(good + bad + protocol, key=lambda x: int(x["t_ns"]))  # type: ignore[call-overload]
    rendered: list[str | dict[str, object]] = [
        *lines[:4],
        '{"t_ns": 17, "conn": 1, "dir": "in", "te',
        *lines[4:],
    ]
    path = write_recording(tmp_path / "bad.jsonl", rendered)

    metrics = await replay(path, kafka_bootstrap, topics)

    expected = expect(path, topics)
    ticks = by_topic(expected, topics.price_ticks_topic)
    volumes = by_topic(expected, topics.volume_stream_topic)
    assert len(volumes) == 5
    assert_topic_matches(consume_all(kafka_bootstrap, topics.price_ticks_topic, len(ticks)), ticks)
    assert_topic_matches(
        consume_all(kafka_bootstrap, topics.volume_stream_topic, len(volumes)), volumes
    )
    assert metrics.source.corrupt_lines == 1
    assert metrics.transform.protocol_messages == 2
    assert sum(metrics.transform.rejects.values()) == 7
    dead = consume_all(kafka_bootstrap, topics.dead_letter_topic or "", 7)
    reasons = sorted(dict(r.headers)["reason"].decode() for r in dead)
    assert len(set(reasons)) == 7  # one of each kind of bad frame
    assert sorted(metrics.transform.rejects.elements()) == reasons
    assert dead[0].value == b"not json at all"


async def test_raw_volume_format_publishes_frames_as_received(
    kafka_bootstrap: str, tmp_path: Path, topics: Output
) -> None:
    text = bar("AAPL", T0, 100, 101, 99, 100.5, 10)
    spaced = f'{{"s": "MSFT",  "t": {T0}, "o": 1, "h": 2, "l": 1, "c": 2, "v": 3, "aggr": " 1m"}}'
    path = write_recording(
        tmp_path / "raw.jsonl", [frame_line(T0 + 1, text), frame_line(T0 + 1, spaced)]
    )
    output = Output(
        price_ticks_topic=topics.price_ticks_topic,
        volume_stream_topic=unique_topic("e2e-raw-volume"),  # checked against raw bars' schema
        volume_format="raw",
        points=3,
    )
    await replay(path, kafka_bootstrap, output)
    records = consume_all(kafka_bootstrap, output.volume_stream_topic, 2)
    assert [r.value for r in records] == [text.encode(), spaced.encode()]
    expected = expect(path, output)
    assert_topic_matches(
        consume_all(kafka_bootstrap, topics.price_ticks_topic, 6),
        by_topic(expected, topics.price_ticks_topic),
    )


async def test_library_api_replays_the_sample(kafka_bootstrap: str, topics: Output) -> None:
    producer = FinazonMarketDataProducer(
        price_ticks_topic=topics.price_ticks_topic,
        volume_stream_topic=topics.volume_stream_topic,
        ticker_symbols=["AAPL"],
        kafka_endpoint=kafka_bootstrap,
    )
    result = await producer.replay_async(SAMPLE)
    expected = expect(SAMPLE, topics)
    assert result.ok
    assert result.delivered == len(expected)
    volumes = by_topic(expected, topics.volume_stream_topic)
    assert_topic_matches(
        consume_all(kafka_bootstrap, topics.volume_stream_topic, len(volumes)), volumes
    )


def test_cli_replay_on_the_embedded_broker_exits_zero_with_a_summary() -> None:
    proc = run_cli("replay", SAMPLE, "--no-dashboard")
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = expected_messages(received_frames(SAMPLE))
    assert "embedded" in proc.stderr
    assert f"{len(expected):,}" in proc.stderr  # delivered, in the summary
    assert proc.stdout == ""


def test_cli_reports_a_missing_recording_clearly() -> None:
    proc = run_cli("replay", "/nonexistent.jsonl", timeout=60)
    assert proc.returncode != 0
    assert "/nonexistent.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr
