"""Expansion: one bar update in, its price ticks and its volume-stream record out (pure).

This is the hot path: every bar of a run goes through :func:`expand`. The payloads are built
by hand, not by the cattrs converter, for speed (see :func:`tick_values` and
:func:`volume_value`).
"""

from __future__ import annotations

import orjson

from finazon_trio.events import Headers, Message
from finazon_trio.settings import Output, Subscription
from finazon_trio.transform.interpolation import (
    extremes_path,
    linear_path,
    new_extremes,
    tick_times,
)
from finazon_trio.transform.state import BarUpdate

#: The Kafka header that marks records not made from a live frame, and its value for minutes
#: backfilled from REST (README, "Gaps and backfill").
ORIGIN_HEADER = "origin"
BACKFILL_ORIGIN = "backfill"


def origin_headers(origin: str | None) -> Headers | None:
    """The headers of records of this origin: none for live frames."""
    return None if origin is None else [(ORIGIN_HEADER, origin.encode())]


def expand(
    update: BarUpdate,
    e: int,
    interval_ms: int,
    output: Output,
    subscription: Subscription,
    headers: Headers | None = None,
) -> list[Message]:
    """The records of one bar update with event time ``e`` (ms since the epoch): ``points``
    price ticks spread over the update interval (``interval_ms`` unless the bar names its
    own), then the volume-stream record; each with ``headers``."""
    bar = update.bar
    n = output.points
    if output.path == "extremes":
        via = new_extremes(
            update.start,
            bar.high,
            bar.low,
            prior_high=update.prior_high,
            prior_low=update.prior_low,
        )
        prices = extremes_path(update.start, bar.close, via, n, include_start=update.new_bar)
    else:
        prices = linear_path(update.start, bar.close, n, include_start=update.new_bar)
    key = bar.symbol.encode()
    topic = output.price_ticks_topic
    times = tick_times(e, bar.frequency_ms or interval_ms, n)
    values = tick_values(bar.symbol, times, prices)
    messages: list[Message] = [
        (topic, key, value, ts, headers) for value, ts in zip(values, times, strict=True)
    ]
    volume = volume_value(update, e, output, subscription)
    messages.append((output.volume_stream_topic, key, volume, e, headers))
    return messages


def volume_value(update: BarUpdate, e: int, output: Output, subscription: Subscription) -> bytes:
    """The volume-stream record's value: the frame as received (``raw``), or descriptive.

    A dict for ``orjson``, not an attrs record through :mod:`finazon_trio.codec`: the record
    costs 7.8 us a bar against 6.0 for this (``python -m benchmarks.codec_costs``), +1.8 us on
    a bar's transform of about 100 us, for the same bytes.
    """
    bar = update.bar
    if output.volume_format == "raw":
        return bar.raw
    sub = subscription
    return orjson.dumps(
        {
            "data_source": either(bar.data_source, sub.dataset),
            "provider": either(bar.provider, sub.provider),
            "channel": either(bar.channel, sub.channel),
            "frequency": either(bar.frequency, sub.frequency),
            "aggregation": either(bar.aggregation, sub.aggregation),
            "symbol": bar.symbol,
            "timestamp": e,
            "bar_time": bar.bar_time,
            "open_price": bar.open,
            "high_price": bar.high,
            "low_price": bar.low,
            "close_price": bar.close,
            "volume": bar.volume,
            "volume_delta": update.volume_delta,
        }
    )


def tick_values(symbol: str, times: list[int], prices: list[float]) -> list[bytes]:
    """The price ticks' values, ``{"symbol":S,"timestamp":T,"price":P}`` for each pair.

    Built without a Python step per tick: the numbers' text comes from one ``orjson.dumps`` per
    list (split at its commas), and all values from one join, split at a NUL byte, which JSON
    text from orjson never contains raw. A dict and a ``dumps`` per tick took 150 us per frame
    of 90 ticks, ``bytes %`` formatting per tick 40 us, this 14 us. An attrs record per tick
    through :mod:`finazon_trio.codec`: 550 to 640 us a bar, against 26 for this on the same
    machine, side by side (``python -m benchmarks.codec_costs``).
    """
    n = len(times)
    head = b'{"symbol":' + orjson.dumps(symbol) + b',"timestamp":'
    parts = [b',"price":'] * (4 * n)  # head T , "price": P } NUL head T ...
    parts[0::4] = orjson.dumps(times)[1:-1].split(b",")
    parts[2::4] = orjson.dumps(prices)[1:-1].split(b",")
    parts[3::4] = [b"}\0" + head] * n
    parts[-1] = b"}"
    return (head + b"".join(parts)).split(b"\0")


def either(value: str | None, fallback: str) -> str:
    """A bar's own label (``d``, ``p``, ``ch``, ``f``, ``aggr``), else the subscription's."""
    return fallback if value is None else value
