"""``tail``'s pure parts: a record as a line, a record as a chart point, the chart itself."""

from __future__ import annotations

import orjson

from finazon_trio.observe.chart import Bar, Tick, render_chart
from finazon_trio.observe.tail import chart_point, format_line, iso_time


def test_a_record_is_one_tab_separated_line_with_its_event_time_in_iso_form() -> None:
    value = b'{"symbol":"AAPL","timestamp":1731080431000,"price":224.56}'
    line = format_line("price_ticks", b"AAPL", 1_731_080_431_000, value)
    assert line == f"price_ticks\tAAPL\t2024-11-08T15:40:31.000Z\t{value.decode()}"
    assert iso_time(1_731_080_431_007) == "2024-11-08T15:40:31.007Z"
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"


def test_a_value_that_is_not_text_still_makes_one_line() -> None:
    line = format_line("dead", None, 0, b"a\nb\xff")
    assert line == "dead\t\t1970-01-01T00:00:00.000Z\ta\\nb\\xff"
    assert "\n" not in line


def test_ticks_descriptive_and_raw_bars_become_chart_points() -> None:
    tick = {"symbol": "AAPL", "timestamp": 1_731_080_431_000, "price": 224.56}
    assert chart_point(orjson.dumps(tick)) == Tick(1_731_080_431_000, 224.56)
    event = {
        "symbol": "AAPL",
        "timestamp": 1,
        "bar_time": 1_731_080_400,
        "open_price": 224.25,
        "high_price": 224.61,
        "low_price": 224.18,
        "close_price": 224.56,
    }
    assert chart_point(orjson.dumps(event)) == Bar(1_731_080_400, 224.25, 224.61, 224.18, 224.56)
    raw = {"s": "AAPL", "t": 1_731_080_400, "o": 1, "h": 3, "l": 0.5, "c": 2, "v": 10}
    assert chart_point(orjson.dumps(raw)) == Bar(1_731_080_400, 1.0, 3.0, 0.5, 2.0)
    for other in (b"not json", b"[1]", b'{"x": 1}', b'{"price": "high", "timestamp": 1}'):
        assert chart_point(other) is None


def test_the_chart_draws_a_candle_per_bar_and_the_ticks_around_them() -> None:
    start = 1_731_080_400
    bars = [Bar(start, 100.0, 104.0, 99.0, 103.0), Bar(start + 60, 103.0, 103.5, 98.0, 98.5)]
    ticks = [Tick(start * 1000 + i * 1000, 100.0 + (i % 60) / 20) for i in range(120)]
    text = render_chart("AAPL", ticks, bars, width=80, height=20).plain
    lines = text.splitlines()
    assert lines[0].startswith("AAPL   last 102.95 at 15:41:59 UTC")
    assert "120 ticks and 2 bars kept" in lines[0]
    assert len(lines) == 20
    assert lines[-1].split() == ["15:40", "15:41"]
    assert "104.00" in lines[1]  # the top of the scale is the highest high
    plot = "\n".join(lines[1:-2])
    assert plot.count("█") >= 2
    assert "│" in plot
    assert "•" in plot
    # The rising bar's body sits left of the falling one's, both in the plot's columns.
    columns = [line.index("█") for line in lines[1:-2] if "█" in line]
    assert min(columns) < max(columns)


def test_an_empty_chart_says_what_it_waits_for() -> None:
    assert "no record of TSLA yet" in render_chart("TSLA", [], [], 80, 20).plain
