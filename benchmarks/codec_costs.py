"""What the cattrs codec would cost the hand-encoded formats: ``python -m benchmarks.codec_costs``.

The spool's columns (:mod:`finazon_trio.sink.message_log`), the price ticks and the volume
record (:mod:`finazon_trio.transform.expand`) are encoded by hand. This measures each against
the same bytes made from an attrs record by :mod:`finazon_trio.codec`: in one process, A/B
interleaved, the best of 5 rounds, over about 100,000 messages (or bars). The figures quoted
next to those encoders come from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

from finazon_trio.codec import decode, encode, encode_line
from finazon_trio.events import Headers, Message, Outgoing
from finazon_trio.settings import Output, Subscription
from finazon_trio.sink import message_log
from finazon_trio.transform.expand import tick_values, volume_value
from finazon_trio.transform.frames import Bar, parse_frame
from finazon_trio.transform.interpolation import linear_path, tick_times
from finazon_trio.transform.state import BarStates, BarUpdate

ROUNDS = 5
#: Frames of 90 ticks and a volume record: 100,100 messages.
FRAMES = 1100
BARS = 20_000
T0_MS = 1_731_080_000_000
SYMBOLS = ("AAPL", "MSFT", "GOOGL", "AMZN", "TSLA")
BAR = (
    '{"d":"us_stocks_essential","p":"finazon","ch":"bars","f":"1s","aggr":"1m","s":"AAPL",'
    '"t":1731079800,"o":224.72,"h":224.82,"l":224.53,"c":224.55,"v":5738}'
)


@attrs.frozen(slots=True)
class Columns:
    received_ns: int
    topics: list[str]
    keys: list[bytes]
    values: list[bytes]
    timestamps: list[int]
    headers: list[Headers | None] | None


@attrs.frozen(slots=True)
class Tick:
    symbol: str
    timestamp: int
    price: float


@attrs.frozen(slots=True)
class Volume:
    data_source: str
    provider: str
    channel: str
    frequency: str
    aggregation: str
    symbol: str
    timestamp: int
    bar_time: int
    open_price: float
    high_price: float
    low_price: float
    close_price: float
    volume: int | float
    volume_delta: int | float


def columns_line(outgoing: Outgoing) -> bytes:
    topics, keys, values, timestamps, headers = zip(*outgoing.messages, strict=True)
    no_headers = headers.count(None) == len(headers)
    return encode_line(
        Columns(
            outgoing.t_ns,
            list(topics),
            list(keys),
            list(values),
            list(timestamps),
            None if no_headers else list(headers),
        )
    )


def columns_outgoing(line: bytes) -> Outgoing:
    c = decode(line, Columns)
    headers = [None] * len(c.topics) if c.headers is None else c.headers
    columns = zip(c.topics, c.keys, c.values, c.timestamps, headers, strict=True)
    return Outgoing(c.received_ns, list(columns))


def tick_records(symbol: str, times: list[int], prices: list[float]) -> list[bytes]:
    return [encode(Tick(symbol, t, p)) for t, p in zip(times, prices, strict=True)]


def volume_record(update: BarUpdate, e: int, subscription: Subscription) -> bytes:
    bar, sub = update.bar, subscription
    return encode(
        Volume(
            sub.dataset if bar.data_source is None else bar.data_source,
            sub.provider if bar.provider is None else bar.provider,
            sub.channel if bar.channel is None else bar.channel,
            sub.frequency if bar.frequency is None else bar.frequency,
            sub.aggregation if bar.aggregation is None else bar.aggregation,
            bar.symbol,
            e,
            bar.bar_time,
            bar.open,
            bar.high,
            bar.low,
            bar.close,
            bar.volume,
            update.volume_delta,
        )
    )


def ab(label: str, count: int, hand: Callable[[], object], codec: Callable[[], object]) -> None:
    """Print the best time per item of each, measured in turns."""
    times: dict[str, list[float]] = {"hand": [], "codec": []}
    for _ in range(ROUNDS):
        for name, run in (("hand", hand), ("codec", codec)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    a, b = (min(times[name]) / count * 1e6 for name in ("hand", "codec"))
    print(f"{label:34} hand {a:8.2f} us   cattrs {b:8.2f} us   {b - a:+8.2f} us  x{b / a:.2f}")


def frames() -> list[Outgoing]:
    out = []
    for n in range(FRAMES):
        symbol = SYMBOLS[n % len(SYMBOLS)]
        times = tick_times(T0_MS + n * 1000, 1000, 90)
        prices = linear_path(224.5 + n / 100, 224.9, 90, include_start=True)
        values = tick_values(symbol, times, prices)
        key = symbol.encode()
        ticks = zip(values, times, strict=True)
        messages: list[Message] = [("price_ticks", key, v, t, None) for v, t in ticks]
        messages.append(("volume_stream", key, BAR.encode(), times[0], None))
        out.append(Outgoing(T0_MS * 10**6 + n, messages))
    return out


def main() -> None:
    batches = frames()
    count = sum(len(outgoing.messages) for outgoing in batches)
    lines = [message_log.encode_batch(outgoing) for outgoing in batches]
    assert lines == [columns_line(outgoing) for outgoing in batches]
    assert [columns_outgoing(line) for line in lines] == batches
    print(f"per message ({count:,} in lines of 91):")
    ab(
        "spool line, write",
        count,
        lambda: [message_log.encode_batch(outgoing) for outgoing in batches],
        lambda: [columns_line(outgoing) for outgoing in batches],
    )
    ab(
        "spool line, read back",
        count,
        lambda: [message_log.decode(line) for line in lines],
        lambda: [columns_outgoing(line) for line in lines],
    )

    times = tick_times(T0_MS, 1000, 90)
    prices = linear_path(224.5, 224.9, 90, include_start=True)
    assert tick_values("AAPL", times, prices) == tick_records("AAPL", times, prices)
    (bar,) = parse_frame(BAR)
    assert isinstance(bar, Bar)
    update = BarStates().advance(bar)
    assert isinstance(update, BarUpdate)
    output, sub = Output(), Subscription()
    assert volume_value(update, T0_MS, output, sub) == volume_record(update, T0_MS, sub)
    print(f"per bar ({BARS:,}):")
    ab(
        "price ticks (90)",
        BARS,
        lambda: [tick_values("AAPL", times, prices) for _ in range(BARS)],
        lambda: [tick_records("AAPL", times, prices) for _ in range(BARS)],
    )
    many = BARS * 5
    ab(
        "volume record",
        many,
        lambda: [volume_value(update, T0_MS + i, output, sub) for i in range(many)],
        lambda: [volume_record(update, T0_MS + i, sub) for i in range(many)],
    )


if __name__ == "__main__":
    main()
