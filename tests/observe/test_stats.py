"""The pure helpers behind the dashboard and the exporter, and the metrics they read."""

from __future__ import annotations

import math

import pytest
import trio

from finazon_trio.observe.metrics import PRICE_TRAIL, Metrics
from finazon_trio.observe.stats import (
    DASH,
    RateWindow,
    cumulative,
    data_clock,
    event_lag,
    fmt_count,
    fmt_duration,
    fmt_latency,
    fmt_percent,
    fmt_price,
    fmt_rate,
    fmt_si,
    latency_quantiles,
    meter,
    quantile,
    queued,
    run_mode,
    sparkline,
    state_name,
)

BOUNDS = (1.0, 2.0, 4.0, 8.0)


def test_quantile_of_an_empty_histogram_is_unknown() -> None:
    assert quantile(BOUNDS, [0] * 5, 0.5) is None


@pytest.mark.parametrize(("q", "expected"), [(0.5, 3.5), (0.99, 7.9), (0.05, 0.25)])
def test_quantiles_interpolate_inside_their_bucket(q: float, expected: float) -> None:
    # 10 values up to 1, 20 in (2, 4], 20 in (4, 8]; none in (1, 2], none above 8.
    assert quantile(BOUNDS, [10, 0, 20, 20, 0], q) == pytest.approx(expected)


def test_quantile_in_the_overflow_bucket_reports_the_last_bound() -> None:
    assert quantile(BOUNDS, [0, 0, 0, 1, 3], 0.99) == 8.0


def test_cumulative_counts_at_a_subset_of_bounds_are_exact() -> None:
    bounds = (1.0, 2.0, 3.0, 4.0)
    counts = [1, 2, 3, 4, 5]  # the last is the overflow
    assert cumulative(bounds, counts, (2.0, 4.0)) == [(2.0, 3), (4.0, 10), (math.inf, 15)]


def test_latency_quantiles_of_the_publishers_histogram_are_in_seconds() -> None:
    bounds_ms = (1.0, 2.0, 4.0, 8.0)  # the last bucket also holds anything slower
    assert latency_quantiles([0, 0, 0, 0], bounds_ms) == (None, None)
    assert latency_quantiles([], bounds_ms) == (None, None)
    p50, p99 = latency_quantiles([0, 10, 10, 1], bounds_ms)
    assert p50 == pytest.approx(0.0021)  # rank 10.5 of 21: just into the (2, 4] ms bucket
    assert p99 == 0.004  # in the overflow bucket: reported as its lower bound


def test_rates_average_over_the_window() -> None:
    window = RateWindow(window=5.0)
    assert window.update(100.0, {"frames": 0}) == {}
    assert window.update(101.0, {"frames": 10}) == {"frames": 10.0}
    for t in range(2, 11):
        rates = window.update(100.0 + t, {"frames": 10 * t + (50 if t == 10 else 0)})
    # Samples older than 5 s are gone: from t=5 (50) to t=10 (150).
    assert rates == {"frames": pytest.approx(20.0)}


def test_a_counter_that_appears_later_is_measured_from_its_first_sample() -> None:
    window = RateWindow(window=5.0)
    window.update(0.0, {"frames": 0})
    assert window.update(1.0, {"frames": 5, "event_seconds": 1_700_000_000.0}) == {"frames": 5.0}
    rates = window.update(3.0, {"frames": 15, "event_seconds": 1_700_000_020.0})
    assert rates == {"frames": 5.0, "event_seconds": 10.0}


def test_rates_need_time_to_pass() -> None:
    window = RateWindow()
    window.update(5.0, {"frames": 1})
    assert window.update(5.0, {"frames": 2}) == {}


def test_sparkline_fills_exactly_its_width() -> None:
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8], 8) == "▁▂▃▄▅▆▇█"
    assert sparkline([1, 8], 5) == "   ▁█"
    assert sparkline([3.0, 3.0], 3) == " ▄▄"
    assert sparkline([], 4) == "    "
    assert sparkline(list(range(100)), 10) == "▁▂▃▃▄▅▆▆▇█"


def test_meter_fills_in_eighths_and_keeps_its_width() -> None:
    assert meter(0.0, 4) == "    "
    assert meter(0.5, 4) == "██  "
    assert meter(0.55, 4) == "██▏ "
    assert meter(1.7, 4) == "████"


@pytest.mark.parametrize(
    ("x", "text"),
    [
        *[(None, DASH), (0, "0"), (0.5, "0.50"), (12.34, "12.3"), (123.4, "123")],
        *[(999.96, "1.00k"), (12_345, "12.3k"), (1_234_567, "1.23M"), (2e9, "2.00G")],
    ],
)
def test_fmt_si_is_at_most_five_characters(x: float | None, text: str) -> None:
    assert fmt_si(x) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        *[(None, DASH), (-1, "0.0s"), (0.44, "0.4s"), (9.94, "9.9s"), (9.96, "10s")],
        *[(59.4, "59s"), (59.6, "1m00s"), (185, "3m05s"), (3725, "1h02m"), (200_000, "2d07h")],
    ],
)
def test_fmt_duration(seconds: float | None, text: str) -> None:
    assert fmt_duration(seconds) == text


def test_other_formats() -> None:
    assert fmt_count(1234567) == "1,234,567"
    assert fmt_count(None) == DASH
    assert fmt_rate(12_345) == "12.3k/s"
    assert fmt_rate(None) == DASH
    assert [fmt_latency(s) for s in (0.00085, 0.0032, 0.018, 1.2, None)] == [
        "850µs",
        "3.20ms",
        "18.0ms",
        "1.20s",
        DASH,
    ]
    assert [fmt_price(p) for p in (220.06, 64123.456, 1.0845, 0.0000123)] == [
        "220.06",
        "64,123.46",
        "1.0845",
        "0.00001230",
    ]
    assert fmt_percent(0.0012) == "+0.12%"
    assert fmt_percent(-0.02) == "-2.00%"
    assert fmt_percent(None) == DASH


def test_figures_read_from_a_snapshot_with_defaults() -> None:
    assert run_mode({}) == "live"
    assert run_mode({"source": {"lines_total": 10}}) == "replay"
    assert run_mode({"mode": "live", "source": {"lines_total": 10}}) == "live"
    assert state_name({}) == "starting"
    assert state_name({"state": "backing_off"}) == "backing off"
    assert queued({"produced": 10, "delivered": 6, "failed": 1}) == 3
    assert queued({}) == 0
    assert queued({"produced": 10, "delivered": 6, "failed": 1, "queued": 2}) == 2
    snap = {"mode": "replay", "transform": {"last_event_ms": 1_000_500}}
    assert event_lag(snap, 1001.0) == pytest.approx(0.5)
    assert data_clock(snap, 5000.0) == 1000.5
    assert data_clock({**snap, "mode": "live"}, 5000.0) == 5000.0
    assert event_lag({}, 5.0) is None


def test_ticker_board_keeps_a_bounded_trail_and_snapshots_share_immutable_rows() -> None:
    metrics = Metrics()
    for i in range(PRICE_TRAIL + 10):
        metrics.tickers.on_bar("AAPL", 1_700_000_040, 100.0, 100.0 + i, 90, 1_700_000_041.0 + i)
    snap = metrics.snapshot()
    row = snap["tickers"]["rows"]["AAPL"]
    assert (row.updates, row.ticks, row.price, row.open) == (
        PRICE_TRAIL + 10,
        90 * 40,
        139.0,
        100.0,
    )
    assert row.recent == tuple(100.0 + i for i in range(10, PRICE_TRAIL + 10))
    assert row.updated_at == 1_700_000_041.0 + PRICE_TRAIL + 9
    metrics.tickers.on_bar("AAPL", 1_700_000_100, 139.0, 140.0, 90, 1_700_000_101.0)
    metrics.tickers.on_bar("MSFT", 1_700_000_100, 400.0, 401.0, 90, 1_700_000_101.0)
    assert snap["tickers"]["rows"]["AAPL"] is row, "the snapshot did not change"
    assert set(snap["tickers"]["rows"]) == {"AAPL"}
    assert metrics.tickers.rows["AAPL"].bar_time == 1_700_000_100


async def test_channel_gauges_sample_how_full_each_channel_is() -> None:
    metrics = Metrics()
    send, receive = trio.open_memory_channel[int](4)
    async with send, receive:
        metrics.channels.watch("source", send)
        assert metrics.snapshot()["channels"]["fill"] == {"source": (0, 4)}
        send.send_nowait(1)
        send.send_nowait(2)
        metrics.channels.sample()
        snap = metrics.snapshot()
        assert snap["channels"] == {"fill": {"source": (2, 4)}}, "plain data, no channel"
