"""The live chart of ``finazon-trio tail --chart SYMBOL``: a pure function from what was read
(ticks and bars of one symbol) to a renderable, drawn with rich.

The x axis is time, the last minutes that fit the width (at least :data:`MIN_BAR_COLUMNS`
columns a bar); each bar is a candle (wick ``│`` from low to high, body ``█`` from open to
close, green when it closed at or above its open, red otherwise) in the middle of its
columns, and the price ticks are dots (``•``, the last tick of each column) around it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import attrs
from rich.text import Text

#: Columns of the price labels on the left.
LABEL_WIDTH = 11
#: Fewest columns one bar may get; fewer bars are shown when the width is short.
MIN_BAR_COLUMNS = 6
#: Lines above and below the plot (title; time axis).
CHROME_LINES = 3


@attrs.frozen(slots=True)
class Tick:
    time_ms: int
    price: float


@attrs.frozen(slots=True)
class Bar:
    """A bar as last seen: its open time (Unix seconds) and prices so far."""

    time_s: int
    open: float
    high: float
    low: float
    close: float


def render_chart(
    symbol: str,
    ticks: Sequence[Tick],
    bars: Sequence[Bar],
    width: int,
    height: int,
    *,
    bar_seconds: int = 60,
) -> Text:
    """The chart of ``symbol`` in ``width`` x ``height`` cells; ``ticks`` in time order,
    ``bars`` by open time."""
    title = _title(symbol, ticks, bars)
    plot_width = max(MIN_BAR_COLUMNS, width - LABEL_WIDTH - 1)
    plot_height = max(3, height - CHROME_LINES)
    if not ticks and not bars:
        return Text(f"{title}\nno record of {symbol} yet; waiting…")
    bar_ms = bar_seconds * 1000
    end = max([t.time_ms for t in ticks[-1:]] + [(b.time_s * 1000) + bar_ms - 1 for b in bars[-1:]])
    first = min([t.time_ms for t in ticks[:1]] + [b.time_s * 1000 for b in bars[:1]])
    shown = max(1, min(plot_width // MIN_BAR_COLUMNS, end // bar_ms - first // bar_ms + 1))
    start = (end // bar_ms - shown + 1) * bar_ms
    span = shown * bar_ms
    bars = [b for b in bars if b.time_s * 1000 >= start]
    ticks = [t for t in ticks if t.time_ms >= start]
    prices = [t.price for t in ticks] + [b.high for b in bars] + [b.low for b in bars]
    if not prices:
        return Text(f"{title}\nnothing of {symbol} in the last {shown} bars")
    low, high = min(prices), max(prices)
    if high == low:
        high, low = high + 0.5, low - 0.5

    def row(price: float) -> int:
        return round((high - price) / (high - low) * (plot_height - 1))

    def column(time_ms: int) -> int:
        return min(plot_width - 1, (time_ms - start) * plot_width // span)

    cells: list[list[tuple[str, str]]] = [[(" ", "")] * plot_width for _ in range(plot_height)]
    for tick in ticks:  # later ticks overwrite earlier ones in the same column
        col = column(tick.time_ms)
        for r in range(plot_height):
            if cells[r][col][0] == "•":
                cells[r][col] = (" ", "")
        cells[row(tick.price)][col] = ("•", "cyan")
    axis = [" "] * plot_width
    for bar in bars:
        first, last = column(bar.time_s * 1000), column(bar.time_s * 1000 + bar_ms - 1)
        col = (first + last) // 2
        colour = "green" if bar.close >= bar.open else "red"
        top, bottom = row(max(bar.open, bar.close)), row(min(bar.open, bar.close))
        for r in range(row(bar.high), row(bar.low) + 1):
            cells[r][col] = ("█" if top <= r <= bottom else "│", colour)
        label = _clock(bar.time_s * 1000)[:5]
        if first + len(label) <= plot_width:
            axis[first : first + len(label)] = label
    out = Text(title + "\n")
    for r in range(plot_height):
        price = high - (high - low) * r / (plot_height - 1)
        label = f"{price:>{LABEL_WIDTH - 1}.2f} " if r % 2 == 0 else " " * LABEL_WIDTH
        out.append(label + "┤", style="dim")
        for char, style in cells[r]:
            out.append(char, style=style)
        out.append("\n")
    out.append(" " * LABEL_WIDTH + "└" + "─" * plot_width + "\n", style="dim")
    out.append(" " * (LABEL_WIDTH + 1) + "".join(axis), style="dim")
    return out


def _title(symbol: str, ticks: Sequence[Tick], bars: Sequence[Bar]) -> str:
    parts = [symbol]
    if ticks:
        parts.append(f"last {ticks[-1].price:g} at {_clock(ticks[-1].time_ms)} UTC")
    parts.append(f"{len(ticks):,} ticks and {len(bars):,} bars kept")
    return "   ".join(parts)


def _clock(time_ms: int) -> str:
    return dt.datetime.fromtimestamp(time_ms / 1000, dt.UTC).strftime("%H:%M:%S")
