"""An independent, deliberately plain reading of the output contract (see the README, "The
output contract").

End-to-end tests compute what Kafka must hold from the frames a source delivered, with this
module, and compare it with what they consume back, message by message
(:func:`assert_topic_matches`). It shares no code with the transform on purpose.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from finazon_trio.settings import Output

from .kafka import Record, consume_all

WINDOWS_MS = {"1s": 1000, "10s": 10_000, "1m": 60_000}


@dataclass(frozen=True)
class Expected:
    topic: str
    key: bytes
    value: Any  # parsed JSON, or raw bytes for the raw volume format
    timestamp: int


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def valid_bar(bar: object) -> bool:
    if not isinstance(bar, dict) or "event" in bar or "status" in bar:
        return False
    if any(k not in bar for k in "sthlocv"):
        return False
    if not isinstance(bar["s"], str) or not bar["s"]:
        return False
    nums = [bar[k] for k in "tohlcv"]
    if not all(_is_number(x) and math.isfinite(x) and x >= 0 for x in nums):
        return False
    o, h, low, c = (bar[k] for k in "ohlc")
    return low <= h and low <= o <= h and low <= c <= h


def _optional(bar: dict[str, Any], field: str, fallback: str) -> str:
    """An optional text field, stripped; absent or null falls back to the subscription."""
    value = bar.get(field)
    return fallback if value is None else str(value).strip()


def expected_messages(
    received: list[tuple[int, str]],
    *,
    points: int = 90,
    frequency: str = "1s",
    dataset: str = "us_stocks_essential",
    aggregation: str = "1m",
    price_topic: str = "price_ticks",
    volume_topic: str = "volume_stream",
    volume_format: str = "descriptive",
) -> list[Expected]:
    """What the contract says Kafka must hold for these (t_ns, text) frames, in order."""
    out: list[Expected] = []
    state: dict[str, tuple[int, float, float]] = {}  # symbol -> (bar time, close, volume)
    for t_ns, text in received:
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if isinstance(obj, dict) and "data" in obj and "event" not in obj and "status" not in obj:
            bars = obj["data"] if isinstance(obj["data"], list) else []
            raws = [orjson.dumps(b) for b in bars]
        else:
            bars, raws = [obj], [text.encode()]
        for bar, raw in zip(bars, raws, strict=True):
            if not valid_bar(bar):
                continue
            s, t = bar["s"], int(bar["t"])
            o, c, v = float(bar["o"]), float(bar["c"]), bar["v"]
            e = t_ns // 1_000_000
            f = _optional(bar, "f", frequency)
            w = WINDOWS_MS[f]
            prev = state.get(s)
            if prev is not None and t < prev[0]:
                continue  # stale
            n = points
            if prev is not None and t == prev[0]:
                p0 = prev[1]
                prices = [p0 + (c - p0) * i / n for i in range(1, n + 1)]
                dv = v - prev[2]
            else:
                prices = (
                    [c] if n == 1 else [o + (c - o) * (i - 1) / (n - 1) for i in range(1, n + 1)]
                )
                dv = v
            prices = [round(p, 8) for p in prices]
            prices[-1] = c
            key = s.encode()
            for i, price in enumerate(prices, start=1):
                ts = e - w + (i * w) // n
                out.append(
                    Expected(price_topic, key, {"symbol": s, "timestamp": ts, "price": price}, ts)
                )
            if volume_format == "raw":
                out.append(Expected(volume_topic, key, raw, e))
            else:
                out.append(
                    Expected(
                        volume_topic,
                        key,
                        {
                            "data_source": _optional(bar, "d", dataset),
                            "provider": _optional(bar, "p", "finazon"),
                            "channel": _optional(bar, "ch", "bars"),
                            "frequency": f,
                            "aggregation": _optional(bar, "aggr", aggregation),
                            "symbol": s,
                            "timestamp": e,
                            "bar_time": t,
                            "open_price": bar["o"],
                            "high_price": bar["h"],
                            "low_price": bar["l"],
                            "close_price": bar["c"],
                            "volume": v,
                            "volume_delta": dv,
                        },
                        e,
                    )
                )
            state[s] = (t, c, v)
    return out


def by_topic(expected: list[Expected], topic: str) -> list[Expected]:
    return [m for m in expected if m.topic == topic]


def received_frames(path: Path) -> list[tuple[int, str]]:
    """The (t_ns, text) of every ``dir: "in"`` line of a recording, skipping corrupt lines."""
    frames = []
    for line in path.read_text().splitlines()[1:]:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("dir") == "in":
            frames.append((entry["t_ns"], entry["text"]))
    return frames


def expect(path: Path, output: Output, **options: object) -> list[Expected]:
    """What the contract says the replay of this recording publishes to these topics."""
    return expected_messages(
        received_frames(path),
        price_topic=output.price_ticks_topic,
        volume_topic=output.volume_stream_topic,
        points=output.points,
        volume_format=output.volume_format,
        **options,  # type: ignore[arg-type]
    )


def assert_topic_matches(records: list[Record], expected: list[Expected]) -> None:
    """Same messages, each key's messages in the same order (keys may share partitions)."""
    got: dict[bytes, list[tuple[object, int]]] = defaultdict(list)
    for r in records:
        value = r.value if isinstance(expected[0].value, bytes) else json.loads(r.value)
        got[r.key].append((value, r.timestamp))
    want: dict[bytes, list[tuple[object, int]]] = defaultdict(list)
    for m in expected:
        want[m.key].append((m.value, m.timestamp))
    assert got.keys() == want.keys()
    for key in want:
        assert len(got[key]) == len(want[key]), key
        for i, (g, w) in enumerate(zip(got[key], want[key], strict=True)):
            assert g == w, f"{key!r} message {i}: {g} != {w}"


def assert_kafka_holds(
    bootstrap: str, expected_frames: list[tuple[int, str]], ticks: str, volumes: str
) -> int:
    """Both topics hold exactly the contract's messages for these frames; returns how many."""
    expected = expected_messages(expected_frames, price_topic=ticks, volume_topic=volumes)
    for topic in (ticks, volumes):
        want = by_topic(expected, topic)
        assert want, "no bar went through"
        assert_topic_matches(consume_all(bootstrap, topic, len(want)), want)
    return len(expected)


def bar_frames(texts: list[str]) -> list[dict[str, Any]]:
    """The frames among ``texts`` that are one valid bar each (flat frames only)."""
    return [obj for obj in map(json_or_none, texts) if isinstance(obj, dict) and valid_bar(obj)]


def json_or_none(text: str) -> Any:
    """``text`` parsed as JSON, or ``None`` if it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return None
