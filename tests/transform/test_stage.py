"""The transform: frames in, the output contract's Kafka records out."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
import trio

from finazon_trio.events import Lifecycle, Message, Outgoing, Received, Sent, SourceEvent
from finazon_trio.observe.metrics import TickerBoard, TransformMetrics
from finazon_trio.settings import Output, Subscription
from finazon_trio.transform import frames
from finazon_trio.transform.stage import (
    BATCH_EVENTS,
    LOG_FIRST_REJECTS,
    LOG_REJECT_INTERVAL,
    Transformer,
    run_transform,
)

from ..helpers.frames import BAR, DROP, text

T0 = 1699540020  # a bar's open time (s)
E0 = 1_699_540_021_500  # receipt time of its first frame (ms)


def ns(ms: int) -> int:
    return ms * 1_000_000


def make(**output: Any) -> tuple[Transformer, TransformMetrics]:
    subscription = output.pop("subscription", Subscription())
    metrics = TransformMetrics()
    return Transformer(Output(**output), subscription, metrics), metrics


def ticks(messages: list[Message]) -> list[dict[str, Any]]:
    return [orjson.loads(m[2]) for m in messages if m[0] == "price_ticks"]


def prices(messages: list[Message]) -> list[float]:
    return [tick["price"] for tick in ticks(messages)]


def volume(messages: list[Message]) -> dict[str, Any]:
    (message,) = [m for m in messages if m[0] == "volume_stream"]
    result: dict[str, Any] = orjson.loads(message[2])
    return result


def test_first_frame_of_a_bar_runs_from_open_to_close() -> None:
    transformer, metrics = make(points=90)
    messages = transformer.on_frame(ns(E0) + 999_999, text())
    assert len(messages) == 91
    o, c = 220.06, 219.96
    expected = [round(o + (c - o) * (i - 1) / 89, 8) for i in range(1, 90)] + [c]
    assert prices(messages) == expected
    assert [t["timestamp"] for t in ticks(messages)] == [
        E0 - 1000 + (i * 1000) // 90 for i in range(1, 91)
    ]
    assert (metrics.bars, metrics.ticks, metrics.volume_messages) == (1, 90, 1)
    assert metrics.last_event_ms == E0


def test_every_message_is_keyed_by_symbol_and_stamped_with_its_timestamp() -> None:
    transformer, _ = make(points=5)
    messages = transformer.on_frame(ns(E0), text())
    assert [m[0] for m in messages] == ["price_ticks"] * 5 + ["volume_stream"]
    for topic, key, value, timestamp, headers in messages:
        parsed = orjson.loads(value)
        assert key == b"AAPL"
        assert parsed["symbol"] == "AAPL"
        assert timestamp == parsed["timestamp"]
        assert headers is None
        if topic == "price_ticks":
            assert list(parsed) == ["symbol", "timestamp", "price"]
            assert type(parsed["price"]) is float


def test_continuing_frame_runs_from_the_previous_close() -> None:
    transformer, metrics = make(points=90)
    transformer.on_frame(ns(E0), text())
    messages = transformer.on_frame(ns(E0 + 1000), text(h=220.2, c=220.2, v=4600))
    p0, c = 219.96, 220.2
    assert prices(messages) == [round(p0 + (c - p0) * i / 90, 8) for i in range(1, 90)] + [c]
    assert ticks(messages)[-1]["timestamp"] == E0 + 1000
    assert volume(messages)["volume_delta"] == 4600 - 4572
    assert (metrics.bars, metrics.ticks) == (2, 180)


def test_a_newer_bar_time_rolls_over_to_a_new_bar() -> None:
    transformer, _ = make(points=4)
    transformer.on_frame(ns(E0), text())
    transformer.on_frame(ns(E0 + 1000), text(c=220.0, v=5000))
    rollover = text(t=T0 + 60, o=10.0, h=11.0, l=10.0, c=11.0, v=30)
    messages = transformer.on_frame(ns(E0 + 60_000), rollover)
    assert prices(messages) == [10.0, 10.33333333, 10.66666667, 11.0]
    assert volume(messages)["volume_delta"] == 30
    assert volume(messages)["bar_time"] == T0 + 60


def test_symbols_keep_their_own_bars() -> None:
    transformer, _ = make(points=2)
    transformer.on_frame(ns(E0), text(o=220.0, c=220.0, h=220.13))
    other = transformer.on_frame(ns(E0), text(s="MSFT", o=10.0, h=12.0, l=10.0, c=12.0, v=1))
    assert prices(other) == [10.0, 12.0]
    assert prices(transformer.on_frame(ns(E0 + 1000), text(c=220.1))) == [220.05, 220.1]


def test_stale_frames_are_rejected_and_leave_the_bar_alone() -> None:
    transformer, metrics = make(points=2)
    transformer.on_frame(ns(E0), text(t=T0 + 60, c=220.0))
    assert transformer.on_frame(ns(E0 + 1000), text(t=T0, c=219.92, v=1)) == []
    assert metrics.rejects == {frames.STALE: 1}
    messages = transformer.on_frame(ns(E0 + 2000), text(t=T0 + 60, c=220.1, v=4600))
    assert prices(messages) == [220.05, 220.1]
    assert volume(messages)["volume_delta"] == 4600 - 4572


@pytest.mark.parametrize("points", [1, 2])
def test_one_and_two_points(points: int) -> None:
    transformer, _ = make(points=points)
    first = transformer.on_frame(ns(E0), text(o=220.0, c=220.1))
    second = transformer.on_frame(ns(E0 + 1000), text(c=220.0))
    if points == 1:
        assert (prices(first), prices(second)) == ([220.1], [220.0])
        assert [t["timestamp"] for t in ticks(second)] == [E0 + 1000]
    else:
        assert (prices(first), prices(second)) == ([220.0, 220.1], [220.05, 220.0])
        assert [t["timestamp"] for t in ticks(second)] == [E0 + 500, E0 + 1000]


@pytest.mark.parametrize(
    ("frame_f", "subscribed", "w"),
    [("1s", "1m", 1000), ("10s", "1s", 10_000), ("1m", "1s", 60_000), (DROP, "10s", 10_000)],
)
def test_interval_from_the_frame_or_else_the_subscription(
    frame_f: object, subscribed: str, w: int
) -> None:
    transformer, _ = make(points=90, subscription=Subscription(frequency=subscribed))
    messages = transformer.on_frame(ns(E0), text(f=frame_f))
    times = [t["timestamp"] for t in ticks(messages)]
    assert times == [E0 - w + (i * w) // 90 for i in range(1, 91)]
    assert [m[3] for m in messages[:-1]] == times


def test_descriptive_volume_message() -> None:
    transformer, _ = make(points=3)
    transformer.on_frame(ns(E0), text())
    messages = transformer.on_frame(ns(E0 + 1000), text(aggr=" 1m", c=220.0, v=4600.5))
    assert messages[-1][3] == E0 + 1000
    assert volume(messages) == {
        "data_source": "us_stocks_essential",
        "provider": "finazon",
        "channel": "bars",
        "frequency": "1s",
        "aggregation": "1m",
        "symbol": "AAPL",
        "timestamp": E0 + 1000,
        "bar_time": T0,
        "open_price": 220.06,
        "high_price": 220.13,
        "low_price": 219.92,
        "close_price": 220.0,
        "volume": 4600.5,
        "volume_delta": 4600.5 - 4572,
    }


def test_missing_descriptive_fields_fall_back_to_the_subscription() -> None:
    subscription = Subscription(
        dataset="binance", channel="bars", frequency="10s", aggregation="5m"
    )
    transformer, _ = make(points=3, subscription=subscription)
    frame = text(d=DROP, p=DROP, ch=DROP, f=DROP, aggr=DROP, s="BTC/USDT")
    fields = volume(transformer.on_frame(ns(E0), frame))
    assert (fields["data_source"], fields["provider"], fields["channel"]) == (
        "binance",
        "finazon",
        "bars",
    )
    assert (fields["frequency"], fields["aggregation"]) == ("10s", "5m")


def test_frame_values_win_over_the_subscription() -> None:
    transformer, _ = make(points=3, subscription=Subscription(dataset="sip_pro", provider="x"))
    fields = volume(transformer.on_frame(ns(E0), text(p="other", ch="bars2", f="10s")))
    assert (fields["data_source"], fields["provider"]) == ("us_stocks_essential", "other")
    assert (fields["channel"], fields["frequency"]) == ("bars2", "10s")


def test_raw_volume_format_is_the_frame_exactly() -> None:
    transformer, _ = make(points=3, volume_format="raw")
    frame = ' {"s":"AAPL" ,"t":1699540020,"o":1,"h":2,"l":1,"c":2,"v":7, "x": [1 ,2]} '
    messages = transformer.on_frame(ns(E0), frame)
    assert messages[-1] == ("volume_stream", b"AAPL", frame.encode(), E0, None)


def test_raw_volume_format_of_a_data_element_is_the_element() -> None:
    transformer, _ = make(points=3, volume_format="raw")
    messages = transformer.on_frame(ns(E0), orjson.dumps({"data": [BAR]}).decode())
    assert messages[-1][2] == orjson.dumps(BAR)


def test_data_frames_with_a_bad_element_between_good_ones() -> None:
    transformer, metrics = make(points=2, dead_letter_topic="dead")
    bad = {**BAR, "s": "BAD", "c": -1}
    frame = orjson.dumps({"ch": "bars", "data": [BAR, bad, {**BAR, "s": "MSFT"}]}).decode()
    messages = transformer.on_frame(ns(E0), frame)
    assert [(m[0], m[1]) for m in messages] == [
        ("price_ticks", b"AAPL"),
        ("price_ticks", b"AAPL"),
        ("volume_stream", b"AAPL"),
        ("dead", b"BAD"),
        ("price_ticks", b"MSFT"),
        ("price_ticks", b"MSFT"),
        ("volume_stream", b"MSFT"),
    ]
    assert messages[3][2] == orjson.dumps(bad)
    assert metrics.bars == 2
    assert metrics.rejects == {frames.NEGATIVE: 1}


def test_protocol_messages_are_counted_not_rejected() -> None:
    transformer, metrics = make(dead_letter_topic="dead")
    for message in ('{"event": "heartbeat", "status": "success"}', '{"status": "error"}'):
        assert transformer.on_frame(ns(E0), message) == []
    assert metrics.protocol_messages == 2
    assert not metrics.rejects
    assert metrics.dead_letters == 0
    assert metrics.bars == 0


@pytest.mark.parametrize(
    ("frame", "reason", "key"),
    [
        ("garbage", frames.NOT_JSON, b""),
        ("[]", frames.NOT_OBJECT, b""),
        (text(c=DROP), frames.MISSING_FIELD, b"AAPL"),
        (text(o="1"), frames.WRONG_TYPE, b"AAPL"),
        (text(v=-1), frames.NEGATIVE, b"AAPL"),
        (text(h=1.0), frames.HIGH_BELOW_LOW, b"AAPL"),
        (text(o=300.0), frames.OPEN_OUTSIDE_RANGE, b"AAPL"),
        (text(c=300.0), frames.CLOSE_OUTSIDE_RANGE, b"AAPL"),
        (text(f="often"), frames.BAD_FREQUENCY, b"AAPL"),
    ],
)
def test_rejects_go_to_the_dead_letter_topic(frame: str, reason: str, key: bytes) -> None:
    transformer, metrics = make(dead_letter_topic="dead")
    [(topic, message_key, value, timestamp, headers)] = transformer.on_frame(ns(E0), frame)
    (reject,) = frames.parse_frame(frame)
    assert isinstance(reject, frames.Reject)
    assert (topic, message_key, value, timestamp) == ("dead", key, frame.encode(), E0)
    assert headers == [("reason", reason.encode()), ("detail", reject.detail.encode())]
    assert metrics.rejects == {reason: 1}
    assert metrics.dead_letters == 1
    assert metrics.bars == 0


def test_stale_frames_go_to_the_dead_letter_topic_too() -> None:
    transformer, metrics = make(points=2, dead_letter_topic="dead")
    transformer.on_frame(ns(E0), text(t=T0 + 60))
    stale = text(t=T0)
    [(topic, key, value, timestamp, headers)] = transformer.on_frame(ns(E0) + 1, stale)
    assert (topic, key, value, timestamp) == ("dead", b"AAPL", stale.encode(), E0)
    assert headers is not None
    assert headers[0] == ("reason", b"stale")
    assert headers[1] == (
        "detail",
        f"bar time {T0} is older than the current bar {T0 + 60}".encode(),
    )
    assert metrics.dead_letters == 1


def test_without_a_dead_letter_topic_rejects_are_only_counted() -> None:
    transformer, metrics = make()
    assert transformer.on_frame(ns(E0), "garbage") == []
    assert metrics.rejects == {frames.NOT_JSON: 1}
    assert metrics.dead_letters == 0


def test_a_reject_does_not_disturb_the_bar_around_it() -> None:
    transformer, _ = make(points=2)
    transformer.on_frame(ns(E0), text(c=220.0))
    transformer.on_frame(ns(E0 + 1000), text(c=300.0))
    assert prices(transformer.on_frame(ns(E0 + 2000), text(c=220.1))) == [220.05, 220.1]


def test_symbols_are_encoded_safely() -> None:
    transformer, _ = make(points=2)
    symbol = 'Ä"\\\n/€'
    messages = transformer.on_frame(ns(E0), text(s=symbol))
    assert {m[1] for m in messages} == {symbol.encode()}
    assert {t["symbol"] for t in ticks(messages)} == {symbol}


def test_extremes_path_visits_a_new_high() -> None:
    transformer, _ = make(points=4, path="extremes")
    transformer.on_frame(ns(E0), text(o=10.0, h=11.0, l=10.0, c=10.0))
    # from 10 up to the new high 12, then down to 11: 3 units over 4 points
    messages = transformer.on_frame(ns(E0 + 1000), text(o=10.0, h=12.0, l=10.0, c=11.0))
    assert prices(messages) == [10.75, 11.5, 11.75, 11.0]


def test_extremes_path_visits_both_from_the_open_of_a_new_bar() -> None:
    transformer, _ = make(points=6, path="extremes")
    # open 10, low 9 (nearer), high 12, close 11: 1 + 3 + 1 = 5 units over 5 steps
    messages = transformer.on_frame(ns(E0), text(o=10.0, h=12.0, l=9.0, c=11.0))
    assert prices(messages) == [10.0, 9.0, 10.0, 11.0, 12.0, 11.0]


def test_extremes_path_without_a_new_extreme_is_linear() -> None:
    linear, _ = make(points=90)
    extremes, _ = make(points=90, path="extremes")
    for transformer in (linear, extremes):
        transformer.on_frame(ns(E0), text())
    frame = text(c=220.1, v=4600)
    assert extremes.on_frame(ns(E0 + 1000), frame) == linear.on_frame(ns(E0 + 1000), frame)


def test_the_ticker_board_sees_every_bar() -> None:
    board = TickerBoard()
    transformer = Transformer(Output(points=3), Subscription(), TransformMetrics(), tickers=board)
    transformer.on_frame(ns(E0), text())
    transformer.on_frame(ns(E0 + 1000), text(c=220.0))
    row = board.rows["AAPL"]
    assert (row.price, row.open, row.bar_time, row.updates, row.ticks) == (220.0, 220.06, T0, 2, 6)
    assert row.updated_at == (E0 + 1000) / 1000


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rejects_are_logged_at_a_limited_rate(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    transformer = Transformer(Output(), Subscription(), TransformMetrics(), clock=clock)
    caplog.set_level(logging.WARNING, logger="finazon_trio.transform.stage")
    for _ in range(LOG_FIRST_REJECTS + 3):
        transformer.on_frame(ns(E0), "garbage")
    transformer.on_frame(ns(E0), "[]")  # another reason has its own allowance
    assert len(caplog.records) == LOG_FIRST_REJECTS + 1
    clock.now += LOG_REJECT_INTERVAL
    transformer.on_frame(ns(E0), "garbage")
    transformer.on_frame(ns(E0), "garbage")
    assert len(caplog.records) == LOG_FIRST_REJECTS + 2
    assert "(3 more not_json since the last report)" in caplog.records[-1].getMessage()


def test_logged_frames_are_shortened(caplog: pytest.LogCaptureFixture) -> None:
    transformer, _ = make()
    with caplog.at_level(logging.WARNING, logger="finazon_trio.transform.stage"):
        transformer.on_frame(ns(E0), "x" * 10_000)
    (record,) = caplog.records
    assert len(record.getMessage()) < 400
    assert "10000 characters" in record.getMessage()


async def test_run_transform_sends_the_records_of_received_frames() -> None:
    transformer, metrics = make(points=2)
    events_send, events = trio.open_memory_channel[SourceEvent](10)
    outgoing_send, outgoing = trio.open_memory_channel[Outgoing](10)
    inputs: list[SourceEvent] = [
        Lifecycle(1, 1, "connected"),
        Sent(2, 1, '{"event": "subscribe"}'),
        Received(ns(E0), 1, '{"event": "heartbeat", "status": "success"}'),
        Received(ns(E0), 1, text()),
        Received(ns(E0 + 1000), 1, "garbage"),
        Lifecycle(3, 1, "disconnected", "bye"),
    ]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_transform, events, outgoing_send, transformer)
        async with events_send:
            for event in inputs:
                await events_send.send(event)
        received = [batch async for batch in outgoing]
    assert received == [Outgoing(ns(E0), transformer_records())]
    assert metrics.protocol_messages == 1
    assert metrics.rejects == {frames.NOT_JSON: 1}


def transformer_records() -> list[Message]:
    transformer, _ = make(points=2)
    return transformer.on_frame(ns(E0), text())


async def test_frames_that_wait_go_out_together_up_to_a_batch() -> None:
    """Frames queued behind the transform share an ``Outgoing`` (BATCH_EVENTS events at most),
    stamped with the first frame's receipt; the records are those of each frame, in order."""
    transformer, _ = make(points=2)
    frames_in = [
        Received(ns(E0 + 1000 * i), 1, text(s=f"S{i % 3}", c=219.93 + 0.01 * i, v=4572 + i))
        for i in range(BATCH_EVENTS + 3)
    ]
    events_send, events = trio.open_memory_channel[SourceEvent](len(frames_in))
    outgoing_send, outgoing = trio.open_memory_channel[Outgoing](len(frames_in))
    async with events_send:
        for frame in frames_in:  # all waiting before the transform starts
            events_send.send_nowait(frame)
    await run_transform(events, outgoing_send, transformer)
    batches = [batch async for batch in outgoing]
    assert [b.t_ns for b in batches] == [frames_in[0].t_ns, frames_in[BATCH_EVENTS].t_ns]
    assert [len(b.messages) for b in batches] == [3 * BATCH_EVENTS, 3 * 3]
    reference, _ = make(points=2)
    expected = [m for f in frames_in for m in reference.on_frame(f.t_ns, f.text)]
    assert [m for b in batches for m in b.messages] == expected


async def test_a_frame_that_arrives_alone_goes_out_alone() -> None:
    transformer, _ = make(points=2)
    events_send, events = trio.open_memory_channel[SourceEvent](0)
    outgoing_send, outgoing = trio.open_memory_channel[Outgoing](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_transform, events, outgoing_send, transformer)
        async with events_send:
            for i in range(3):
                await events_send.send(Received(ns(E0 + 1000 * i), 1, text(c=219.95 + 0.01 * i)))
                assert len((await outgoing.receive()).messages) == 3
