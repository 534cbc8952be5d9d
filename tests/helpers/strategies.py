"""Hypothesis strategies for frames: valid bars, bar-like objects, any frame text."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from .frames import DROP

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
