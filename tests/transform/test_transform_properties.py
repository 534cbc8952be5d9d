"""Fuzzing the transform: any text gives contract-abiding records or counted rejects, never an
exception; sequences of valid frames keep the per-symbol invariants."""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finazon_trio.events import Message
from finazon_trio.observe.metrics import TransformMetrics
from finazon_trio.settings import Output, Subscription, interval_ms
from finazon_trio.transform.frames import parse_frame
from finazon_trio.transform.stage import Transformer

from ..helpers.frames import DROP

T0 = 1699540020
FIELDS = ("s", "t", "o", "h", "l", "c", "v", "d", "p", "ch", "f", "aggr")
SYMBOLS = ("AAPL", "MSFT", "BTC/USDT")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
prices = st.integers(0, 10**6) | st.floats(0, 1e6) | st.floats(0, 1e-3)
volumes = st.integers(0, 10**12) | st.floats(0, 1e12)
frequencies = st.sampled_from(["1s", "10s", "1m", " 1m", "1s "])


@st.composite
def valid_bars(draw: st.DrawFn, symbols: tuple[str, ...] = SYMBOLS) -> dict[str, Any]:
    low, a, b, high = sorted(draw(st.lists(prices, min_size=4, max_size=4)))
    bar: dict[str, Any] = {
        "s": draw(st.sampled_from(symbols)),
        "t": draw(st.sampled_from([T0, T0 + 60, T0 + 120, float(T0 + 60)])),
        "o": a,
        "h": high,
        "l": low,
        "c": b,
        "v": draw(volumes),
    }
    if draw(st.booleans()):
        bar["o"], bar["c"] = b, a
    for key, values in (("d", st.text(max_size=5)), ("f", frequencies), ("aggr", frequencies)):
        if draw(st.booleans()):
            bar[key] = draw(values)
    return bar


@st.composite
def bar_like(draw: st.DrawFn) -> dict[str, Any]:
    """A valid bar, sometimes with a field or two removed or replaced by any JSON value."""
    bar = draw(valid_bars())
    changes = draw(
        st.dictionaries(st.sampled_from(FIELDS), json_values | st.just(DROP), max_size=2)
    )
    return {key: value for key, value in {**bar, **changes}.items() if value is not DROP}


frame_texts = st.one_of(
    st.text(max_size=60),
    json_values.map(lambda v: orjson.dumps(v).decode()),
    bar_like().map(lambda b: orjson.dumps(b).decode()),
    st.lists(bar_like() | json_values, max_size=4).map(
        lambda items: orjson.dumps({"ch": "bars", "data": items}).decode()
    ),
    st.sampled_from(['{"event": "heartbeat", "status": "success"}', '{"status": "error"}']),
)


def check_bar_records(records: list[Message], e: int, n: int, default_w: int) -> None:
    """One bar's records: ``n`` price ticks, then its volume message, as the contract says."""
    *tick_records, (volume_topic, key, value, timestamp, headers) = records
    assert volume_topic == "volume_stream"
    assert timestamp == e
    assert headers is None
    volume = orjson.loads(value)
    assert volume["timestamp"] == e
    assert volume["symbol"].encode() == key
    w = interval_ms(volume["frequency"]) or default_w
    assert len(tick_records) == n
    for i, (topic, tick_key, tick_value, tick_time, tick_headers) in enumerate(tick_records, 1):
        tick = orjson.loads(tick_value)
        assert topic == "price_ticks"
        assert tick_key == key
        assert tick_headers is None
        assert tick["symbol"] == volume["symbol"]
        assert tick["timestamp"] == tick_time == e - w + (i * w) // n
        assert type(tick["price"]) is float
        assert math.isfinite(tick["price"])
        assert tick["price"] == round(tick["price"], 8) or i == n
    assert tick["price"] == volume["close_price"]


def split_bars(messages: list[Message], n: int) -> tuple[list[list[Message]], list[Message]]:
    """The records of each bar, and the dead letters."""
    bars: list[list[Message]] = []
    dead: list[Message] = []
    current: list[Message] = []
    for message in messages:
        if message[0] == "dead":
            assert not current, "a dead letter interrupted a bar's records"
            dead.append(message)
            continue
        current.append(message)
        if message[0] == "volume_stream":
            bars.append(current)
            current = []
    assert not current
    return bars, dead


@SETTINGS
@given(
    texts=st.lists(frame_texts, min_size=1, max_size=6),
    n=st.integers(1, 100),
    path=st.sampled_from(["linear", "extremes"]),
)
def test_any_text_gives_contract_records_or_counted_rejects(
    texts: list[str], n: int, path: Any
) -> None:
    metrics = TransformMetrics()
    output = Output(points=n, path=path, dead_letter_topic="dead")
    transformer = Transformer(output, Subscription(), metrics)
    for k, text in enumerate(texts):
        before = (metrics.bars, metrics.protocol_messages, metrics.rejects.total())
        e = 1_700_000_000_000 + k
        messages = transformer.on_frame(e * 1_000_000, text)
        bars, dead = split_bars(messages, n)
        for records in bars:
            check_bar_records(records, e, n, 1000)
        new_rejects = metrics.rejects.total() - before[2]
        assert len(bars) == metrics.bars - before[0]
        assert len(dead) == new_rejects
        for _topic, _key, value, timestamp, headers in dead:
            assert timestamp == e
            assert headers is not None
            assert headers[0][0] == "reason"
            assert value.decode(errors="replace") in text or text.startswith('{"ch"')
        items = len(bars) + metrics.protocol_messages - before[1] + new_rejects
        assert items == len(parse_frame(text))
    assert metrics.ticks == n * metrics.bars == n * metrics.volume_messages
    assert metrics.dead_letters == metrics.rejects.total()


@SETTINGS
@given(
    bars=st.lists(valid_bars(), min_size=1, max_size=25),
    n=st.integers(1, 100),
    path=st.sampled_from(["linear", "extremes"]),
)
def test_valid_frames_keep_the_per_symbol_invariants(
    bars: list[dict[str, Any]], n: int, path: Any
) -> None:
    metrics = TransformMetrics()
    transformer = Transformer(Output(points=n, path=path), Subscription(), metrics)
    state: dict[str, tuple[int, float, int | float, float, float]] = {}
    stale = 0
    for k, bar in enumerate(bars):
        e = 1_700_000_000_000 + 1000 * k
        messages = transformer.on_frame(e * 1_000_000, orjson.dumps(bar).decode())
        s, t, o, c, v = bar["s"], int(bar["t"]), float(bar["o"]), float(bar["c"]), bar["v"]
        prev = state.get(s)
        if prev is not None and t < prev[0]:
            stale += 1
            assert messages == []
            continue
        check_bar_records(messages, e, n, 1000)
        got = [orjson.loads(m[2])["price"] for m in messages[:-1]]
        volume = orjson.loads(messages[-1][2])
        continuing = prev is not None and t == prev[0]
        start = prev[1] if prev is not None and continuing else o
        if continuing and prev is not None:
            assert volume["volume_delta"] == v - prev[2]
            if n > 1 and path == "linear":
                assert got[0] == round(start + (c - start) / n, 8)
            low, high = min(prev[3], bar["l"]), max(prev[4], bar["h"])
        else:
            assert volume["volume_delta"] == v
            assert got[0] == (round(o, 8) if n > 1 else c)
            low, high = bar["l"], bar["h"]
        assert got[-1] == c
        slack = 1e-8 + 1e-12 * high
        assert all(min(low, start) - slack <= p <= max(high, start) + slack for p in got)
        state[s] = (t, c, v, low, high)
    assert metrics.rejects.total() == stale
    assert metrics.bars == len(bars) - stale
