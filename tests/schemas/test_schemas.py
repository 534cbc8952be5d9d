"""The declared schemas: shipped, loadable by name, valid JSON Schema, and in step with the code."""

from __future__ import annotations

import jsonschema
import orjson
import pytest

from finazon_trio import schemas
from finazon_trio.events import Received
from finazon_trio.observe.metrics import TransformMetrics
from finazon_trio.recording import iter_entries
from finazon_trio.settings import Output, Subscription
from finazon_trio.transform.expand import tick_values
from finazon_trio.transform.frames import REASONS, Reject, parse_frame
from finazon_trio.transform.record import BAD_RECORD, encode
from finazon_trio.transform.stage import Transformer
from finazon_trio.transform.state import BarStates

from ..helpers.frames import text as bar_text
from ..helpers.paths import SAMPLE


def test_every_schema_is_a_valid_json_schema_with_a_title() -> None:
    for name in schemas.NAMES:
        document = schemas.load(name)
        jsonschema.validators.validator_for(document).check_schema(document)
        assert document["title"]
        assert document["x-describes"] in ("value", "record")


def test_an_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(schemas.UnknownSchemaError, match="no schema named 'bars'; the schemas"):
        schemas.load("bars")


def test_the_dead_letter_reasons_are_the_transforms() -> None:
    headers = schemas.load("dead-letter")["properties"]["headers"]
    assert headers["properties"]["reason"]["enum"] == [*REASONS, BAD_RECORD]


def test_a_tick_fits_and_anything_else_does_not() -> None:
    (value,) = tick_values("AAPL", [1_731_080_431_000], [224.56])
    schemas.validate_record("price-tick", b"AAPL", value)
    for bad in (
        {"symbol": "AAPL", "timestamp": 1, "price": "224.56"},
        {"symbol": "AAPL", "timestamp": 1.5, "price": 1.0},
        {"symbol": "AAPL", "timestamp": 1, "price": 1.0, "extra": 1},
        {"symbol": "", "timestamp": 1, "price": 1.0},
        {"symbol": "AAPL", "price": 1.0},
    ):
        with pytest.raises(jsonschema.ValidationError):
            schemas.validate_record("price-tick", b"AAPL", orjson.dumps(bad))


def test_every_bar_the_transform_accepts_fits_the_raw_schema() -> None:
    frames = [
        '{"s":"AAPL","t":1699540020,"o":1,"h":2,"l":0.5,"c":1.5,"v":10}',
        '{"d":"x","p":null,"ch":"bars","f":"1s","aggr":" 1m","s":"A","t":1699540020.0,'
        '"o":1,"h":1,"l":1,"c":1,"v":0.5,"extra":[1]}',
    ]
    for text in frames:
        (bar,) = parse_frame(text)
        schemas.validate_record("volume-stream-raw", b"A", bar.raw)  # type: ignore[union-attr]


def test_a_dead_letter_is_checked_as_a_whole_record() -> None:
    headers = [("reason", b"not_json"), ("detail", b"not JSON: unexpected character")]
    schemas.validate_record("dead-letter", b"", b"{garbage", headers)
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate_record("dead-letter", b"", b"{garbage", [("reason", b"bored")])


def test_a_gap_record() -> None:
    gap = {"symbol": "AAPL", "first_missing": 1_731_080_400, "last_missing": 1_731_080_460}
    schemas.validate("gap", gap | {"reason": "reconnect"})
    schemas.validate("gap", gap | {"reason": "x", "dataset": "d", "detected_at": 1})
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate("gap", gap)  # no reason


def test_every_frames_record_of_the_sample_fits_its_schema() -> None:
    """What the ingest role publishes for a whole recording, backfilled minutes included."""
    output = Output(frames_topic="finazon_frames", dead_letter_topic="dead")
    transformer = Transformer(output, Subscription(), TransformMetrics())
    records = [
        message
        for event in iter_entries(SAMPLE)
        if isinstance(event, Received)
        for message in transformer.on_frame(event.t_ns, event.text)
        if message[0] == "finazon_frames"
    ]
    assert len(records) > 1000
    for _topic, key, value, _timestamp, _headers in records:
        schemas.validate_record("frames", key, value)
    update = BarStates().advance(parse_frame(bar_text())[0])  # type: ignore[arg-type]
    assert not isinstance(update, Reject)
    schemas.validate_record(
        "frames", b"AAPL", encode(update, 1, 60_000, Subscription(), "backfill")
    )
    for bad in (
        {"version": 2},
        {**orjson.loads(value), "origin": "live"},
        {**orjson.loads(value), "x": 1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            schemas.validate_record("frames", b"AAPL", orjson.dumps(bad))
