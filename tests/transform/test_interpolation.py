"""The price paths and tick times, checked against the contract's formulas."""

from __future__ import annotations

import math

import pytest

from finazon_trio.transform.interpolation import (
    extremes_path,
    linear_path,
    new_extremes,
    tick_offsets,
    tick_times,
)


def test_continuing_frame_runs_from_the_previous_close_excluded() -> None:
    assert linear_path(10.0, 11.0, 4, include_start=False) == [10.25, 10.5, 10.75, 11.0]


def test_new_bar_runs_from_the_open_included() -> None:
    assert linear_path(10.0, 11.0, 4, include_start=True) == [10.0, 10.33333333, 10.66666667, 11.0]


@pytest.mark.parametrize(("p0", "c"), [(220.06, 219.96), (0.00012345, 0.00012399), (5.0, 5.0)])
def test_continuing_formula_exactly(p0: float, c: float) -> None:
    n = 90
    path = linear_path(p0, c, n, include_start=False)
    assert path[:-1] == [round(p0 + (c - p0) * i / n, 8) for i in range(1, n)]
    assert path[-1] == c


@pytest.mark.parametrize(("o", "c"), [(220.06, 219.96), (30000.5, 30100.25), (1.0, 1.0)])
def test_new_bar_formula_exactly(o: float, c: float) -> None:
    n = 90
    path = linear_path(o, c, n, include_start=True)
    assert path[:-1] == [round(o + (c - o) * (i - 1) / (n - 1), 8) for i in range(1, n)]
    assert path[0] == o
    assert path[-1] == c


def test_one_point_is_the_close() -> None:
    assert linear_path(10.0, 11.0, 1, include_start=True) == [11.0]
    assert linear_path(10.0, 11.0, 1, include_start=False) == [11.0]


def test_two_points() -> None:
    assert linear_path(10.0, 11.0, 2, include_start=True) == [10.0, 11.0]
    assert linear_path(10.0, 11.0, 2, include_start=False) == [10.5, 11.0]


def test_prices_are_rounded_to_8_decimals_but_the_last_is_exactly_the_close() -> None:
    close = 0.123456789
    assert linear_path(0.0, close, 3, include_start=False) == [0.04115226, 0.08230453, close]
    assert linear_path(0.0, 1.0, 3, include_start=False) == [0.33333333, 0.66666667, 1.0]


def test_prices_near_the_float_limit_stay_finite() -> None:
    path = linear_path(1.7e308, 0.0, 90, include_start=False)
    assert all(math.isfinite(p) for p in path)
    assert path[-1] == 0.0
    assert path[0] == pytest.approx(1.7e308 / 90 * 89)


def test_tick_times() -> None:
    assert tick_times(10_000, 1000, 3) == [9333, 9666, 10_000]
    assert tick_times(10_000, 1000, 1) == [10_000]
    assert tick_times(10_000, 1000, 2) == [9500, 10_000]


@pytest.mark.parametrize("w", [1000, 10_000, 60_000])
def test_tick_times_formula_exactly(w: int) -> None:
    e, n = 1_699_540_020_123, 90
    times = tick_times(e, w, n)
    assert times == [e - w + (i * w) // n for i in range(1, n + 1)]
    assert times[-1] == e
    assert times == sorted(times)
    assert tick_offsets(w, n) == tuple(t - e for t in times)


def test_ten_second_and_one_minute_spacing() -> None:
    assert tick_times(100_000, 10_000, 4) == [92_500, 95_000, 97_500, 100_000]
    assert tick_times(100_000, 60_000, 90)[:3] == [40_666, 41_333, 42_000]


def test_new_extremes() -> None:
    assert new_extremes(10.0, 11.0, 9.0, prior_high=11.0, prior_low=9.0) == ()
    assert new_extremes(10.0, 12.0, 9.0, prior_high=11.0, prior_low=9.0) == (12.0,)
    assert new_extremes(10.0, 11.0, 8.0, prior_high=11.0, prior_low=9.0) == (8.0,)
    # both: the nearer one first
    assert new_extremes(10.0, 12.0, 7.0, prior_high=11.0, prior_low=9.0) == (12.0, 7.0)
    assert new_extremes(10.0, 14.0, 8.0, prior_high=11.0, prior_low=9.0) == (8.0, 14.0)
    # a tie goes to the high
    assert new_extremes(10.0, 12.0, 8.0, prior_high=11.0, prior_low=9.0) == (12.0, 8.0)


def test_a_new_bar_measures_its_extremes_from_the_open() -> None:
    assert new_extremes(10.0, 10.0, 10.0, prior_high=10.0, prior_low=10.0) == ()
    assert new_extremes(10.0, 10.5, 9.0, prior_high=10.0, prior_low=10.0) == (10.5, 9.0)


def test_extremes_new_high_only() -> None:
    # 10 → 12 → 11: three units travelled, four steps of 0.75
    assert extremes_path(10.0, 11.0, (12.0,), 5, include_start=True) == [
        10.0,
        10.75,
        11.5,
        11.75,
        11.0,
    ]


def test_extremes_new_low_only() -> None:
    # continuing from 10: 10 → 8 → 10, four units, four points after the start
    assert extremes_path(10.0, 10.0, (8.0,), 4, include_start=False) == [9.0, 8.0, 9.0, 10.0]


def test_extremes_both_nearer_first() -> None:
    # 10 → 11 → 7 → 9: seven units, one per point after the start
    via = new_extremes(10.0, 11.0, 7.0, prior_high=10.5, prior_low=9.5)
    assert via == (11.0, 7.0)
    path = extremes_path(10.0, 9.0, via, 7, include_start=False)
    assert path == [11.0, 10.0, 9.0, 8.0, 7.0, 8.0, 9.0]


def test_extremes_points_are_spread_by_distance() -> None:
    # 0 → 3 → 2: with 5 points from the start, spacing 1 along the path
    assert extremes_path(0.0, 2.0, (3.0,), 5, include_start=True) == [0.0, 1.0, 2.0, 3.0, 2.0]


@pytest.mark.parametrize("include_start", [True, False])
@pytest.mark.parametrize("n", [1, 2, 90])
def test_extremes_without_new_extremes_is_linear(include_start: bool, n: int) -> None:
    expected = linear_path(220.06, 219.96, n, include_start=include_start)
    assert extremes_path(220.06, 219.96, (), n, include_start=include_start) == expected


@pytest.mark.parametrize("via", [(), (5.0,), (5.0, 5.0)])
def test_extremes_with_zero_distance_are_all_the_close(via: tuple[float, ...]) -> None:
    assert extremes_path(5.0, 5.0, via, 4, include_start=True) == [5.0] * 4
    assert extremes_path(5.0, 5.0, via, 3, include_start=False) == [5.0] * 3
    # rounded like any price, but the last one is exactly the close
    close = 0.123456789
    corners = tuple(close for _ in via)
    assert extremes_path(close, close, corners, 3, include_start=False) == [0.12345679] * 2 + [
        close
    ]


def test_extremes_one_point_is_the_close() -> None:
    assert extremes_path(10.0, 11.0, (12.0,), 1, include_start=True) == [11.0]
    assert extremes_path(10.0, 11.0, (12.0,), 1, include_start=False) == [11.0]


def test_extremes_round_and_end_exactly_at_the_close() -> None:
    path = extremes_path(0.0, 0.123456789, (1.0,), 90, include_start=False)
    assert path[-1] == 0.123456789
    assert all(p == round(p, 8) for p in path[:-1])
    assert 0.99 < max(path) <= 1.0


def test_extremes_near_the_float_limit_stay_finite() -> None:
    path = extremes_path(1e308, 1e308, (1.7e308, 0.0), 90, include_start=True)
    assert all(math.isfinite(p) for p in path)
    assert 0.0 <= min(path) < 1e306
    assert max(path) <= 1.7e308
