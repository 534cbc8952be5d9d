"""The frames record: the ingest role's record, expanded by a worker, gives exactly the bytes,
keys and timestamps of the single-process transform (README, "Scaling out")."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from finazon_trio.events import Message
from finazon_trio.observe.metrics import TransformMetrics
from finazon_trio.settings import Output, Subscription
from finazon_trio.transform.expand import BACKFILL_ORIGIN, expand, origin_headers
from finazon_trio.transform.frames import Bar, Reject, parse_frame
from finazon_trio.transform.record import (
    BAD_RECORD,
    FRAMES_RECORD_VERSION,
    decode,
    encode,
)
from finazon_trio.transform.stage import Transformer
from finazon_trio.transform.state import BarStates

from ..helpers.frames import text as bar_text
from ..helpers.strategies import SETTINGS, frame_texts, valid_bars

SUBSCRIPTIONS = st.sampled_from(
    [Subscription(), Subscription(dataset="crypto", frequency="10s", aggregation="5m")]
)


def worker_output(records: list[Message], output: Output) -> list[Message]:
    """What a worker makes of the ingest role's records (its own subscription: the default)."""
    out: list[Message] = []
    for _topic, key, value, timestamp, _headers in records:
        decoded = decode(value)
        assert not isinstance(decoded, Reject), decoded
        update, e, interval, origin = decoded
        assert e == timestamp
        assert key == update.bar.symbol.encode()
        out += expand(update, e, interval, output, Subscription(), origin_headers(origin))
    return out


@SETTINGS
@given(
    texts=st.lists(frame_texts | valid_bars().map(lambda b: orjson.dumps(b).decode()), max_size=12),
    n=st.integers(1, 100),
    path=st.sampled_from(["linear", "extremes"]),
    volume_format=st.sampled_from(["descriptive", "raw"]),
    subscription=SUBSCRIPTIONS,
)
def test_ingest_then_worker_gives_the_single_process_bytes(
    texts: list[str], n: int, path: Any, volume_format: Any, subscription: Subscription
) -> None:
    output = Output(points=n, path=path, volume_format=volume_format)
    single = Transformer(output, subscription, TransformMetrics())
    ingest = Transformer(
        Output(frames_topic="frames", dead_letter_topic="dead"), subscription, TransformMetrics()
    )
    for k, text in enumerate(texts):
        t_ns = (1_700_000_000_000 + 1000 * k) * 1_000_000
        expected = single.on_frame(t_ns, text)
        records = [m for m in ingest.on_frame(t_ns, text) if m[0] == "frames"]
        assert worker_output(records, output) == expected


@SETTINGS
@given(bar=valid_bars(), previous=st.none() | valid_bars(), e=st.integers(0, 2**53))
def test_the_record_round_trips_exactly(
    bar: dict[str, Any], previous: dict[str, Any] | None, e: int
) -> None:
    states = BarStates()
    for obj in (previous, bar):
        if obj is None:
            continue
        parsed = parse_frame(orjson.dumps(obj).decode())[0]
        assert isinstance(parsed, Bar)
        update = states.advance(parsed)
    if isinstance(update, Reject):
        return
    decoded = decode(encode(update, e, 1000, Subscription()))
    assert not isinstance(decoded, Reject)
    got, got_e, interval, origin = decoded
    assert (got_e, interval, origin) == (e, 1000, None)
    assert got.bar.raw == update.bar.raw
    assert attrs_without_texts(got) == attrs_without_texts(update)
    assert type(got.bar.volume) is type(update.bar.volume)
    assert type(got.volume_delta) is type(update.volume_delta)


def attrs_without_texts(update: Any) -> tuple[Any, ...]:
    bar = update.bar
    numbers = (bar.symbol, bar.bar_time, bar.open, bar.high, bar.low, bar.close, bar.volume)
    state = (update.new_bar, update.start, update.volume_delta, update.prior_high)
    return (*numbers, bar.frequency_ms, *state, update.prior_low)


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (b"garbage", "not JSON"),
        (None, "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"version": 2}', "version 2, this worker reads version 1"),
        (b'{"version": "1"}', "version '1'"),
        (b'{"version": 1, "e": 5}', "missing"),
    ],
)
def test_anything_else_is_a_bad_record_saying_why(value: bytes | None, detail: str) -> None:
    reject = decode(value)
    assert isinstance(reject, Reject)
    assert reject.reason == BAD_RECORD
    assert detail in reject.detail
    assert FRAMES_RECORD_VERSION == 1


def test_a_backfilled_minute_keeps_its_origin_through_the_record() -> None:
    """The worker marks a backfilled minute's records as the single process does."""
    states = BarStates()
    parsed = parse_frame(bar_text())[0]
    assert isinstance(parsed, Bar)
    update = states.advance(parsed)
    assert not isinstance(update, Reject)
    e = parsed.bar_time * 1000 + 60_000
    record = encode(update, e, 60_000, Subscription(), BACKFILL_ORIGIN)
    decoded = decode(record)
    assert not isinstance(decoded, Reject)
    got, got_e, interval, origin = decoded
    assert origin == BACKFILL_ORIGIN
    headers = origin_headers(origin)
    assert headers == [("origin", b"backfill")]
    single = expand(update, e, 60_000, Output(), Subscription(), headers)
    assert expand(got, got_e, interval, Output(), Subscription(), headers) == single
    assert all(message[4] == headers for message in single)
