"""The declared schemas enforced by the broker: the embedded broker (Tansu) started with a
schema registry made of them refuses anything off-schema, and a replay's records all pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finazon_trio import schemas
from finazon_trio.server.synthetic import generate_recording
from finazon_trio.sink.broker import EmbeddedBroker

from ..helpers.cli import run_cli
from ..helpers.contract import assert_topic_matches, by_topic, expected_messages, received_frames
from ..helpers.kafka import consume_all, produce_all, unique_topic


def test_a_broker_enforcing_the_schemas_takes_every_record_of_a_replay(tmp_path: Path) -> None:
    ticks, volume = unique_topic("registry-ticks"), unique_topic("registry-volume")
    raw = unique_topic("registry-raw-volume")
    registry = schemas.write_broker_registry(
        tmp_path / "registry",
        {ticks: "price-tick", volume: "volume-stream", raw: "volume-stream-raw"},
    )
    recording = generate_recording(tmp_path / "rec.jsonl", ["AAPL", "MSFT"], minutes=1, seed=5)
    with EmbeddedBroker(schema_registry=registry) as broker:
        topics = ("--price-ticks-topic", ticks, "--volume-stream-topic", volume)
        done = run_cli(
            "replay", recording, "--no-dashboard", "--kafka-endpoint", broker.bootstrap, *topics
        )
        assert done.returncode == 0, done.stderr[-3000:]
        # Off-schema: raw bars where bar events are declared.
        failed = tmp_path / "failed.jsonl"
        done = run_cli(
            *("replay", recording, "--no-dashboard", "--kafka-endpoint", broker.bootstrap),
            *("--price-ticks-topic", ticks, "--volume-stream-topic", volume),
            *("--volume-format", "raw", "--failed-path", failed),
        )
        assert done.returncode == 1, done.stderr[-3000:]
        refused = [json.loads(line) for line in failed.read_text().splitlines()]
        bars = [r for r in refused if r["topic"] == volume]
        assert len(bars) == 120  # every raw bar event was refused...
        assert {r["error"] for r in bars} == {"Broker: Broker failed to validate record"}
        # ...and nothing else was, for its schema (after a refused batch, Tansu fences the
        # idempotent producer: ticks in flight then fail too, and are kept in the file).
        assert {r["topic"] for r in refused} <= {ticks, volume}
        assert all("validate" not in r["error"] for r in refused if r["topic"] == ticks)
        # ...while raw bars go where they are declared.
        done = run_cli(
            *("replay", recording, "--no-dashboard", "--kafka-endpoint", broker.bootstrap),
            *("--price-ticks-topic", ticks, "--volume-stream-topic", raw, "--volume-format", "raw"),
        )
        assert done.returncode == 0, done.stderr[-3000:]
        expected = expected_messages(
            received_frames(recording), price_topic=ticks, volume_topic=volume
        )
        # The first replay's records, whole (the checks of consume_all include the schemas).
        got = consume_all(broker.bootstrap, volume, 120)
        assert_topic_matches(got, by_topic(expected, volume))
        got_ticks = consume_all(broker.bootstrap, ticks, 2 * 120 * 90)
        assert_topic_matches(got_ticks[: 120 * 90], by_topic(expected, ticks))
        # A tick without timestamp and price, produced directly: refused too.
        with pytest.raises(AssertionError, match=r"INVALID_RECORD|validate"):
            produce_all(broker.bootstrap, [(ticks, b"AAPL", b'{"symbol": "AAPL"}', 1, None)])
