"""The hot path's shortcuts give exactly what the plain code gives: ``round_prices`` is
``round(x, 8)`` bit for bit, and ``parse_bar``'s quick test agrees with the full checks."""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finazon_trio.transform.frames import _check_bar, parse_bar
from finazon_trio.transform.interpolation import DECIMALS, round_prices

from ..helpers.frames import DROP

FAST_LIMIT = 2.0**51 / 10**DECIMALS  # where the fast path ends (about 22 million)


def bits(values: list[float]) -> list[bytes]:
    """Exact representations: tells 0.0 from -0.0 and compares NaNs."""
    return [struct.pack("<d", x) for x in values]


def check(values: list[float]) -> None:
    assert bits(round_prices(values)) == bits([round(x, DECIMALS) for x in values])


def around(x: float, steps: int = 3) -> list[float]:
    """``x`` and its float neighbours, ``steps`` on each side."""
    below, above, out = x, x, [x]
    for _ in range(steps):
        below, above = math.nextafter(below, -math.inf), math.nextafter(above, math.inf)
        out += [below, above]
    return out


@given(st.lists(st.floats(), max_size=20))
def test_any_float(values: list[float]) -> None:
    check(values)


@given(st.lists(st.floats(0, 2 * FAST_LIMIT) | st.floats(0, 1e-4), max_size=20))
def test_prices(values: list[float]) -> None:
    check(values)


@given(st.integers(0, 2**53))
def test_near_a_half_of_the_last_decimal(n: int) -> None:
    # (n + 0.5) / 1e8 is where the decimal rounding turns: the product's own error matters here
    check(around((n + 0.5) / 10**DECIMALS))


def test_exact_halves_round_to_even() -> None:
    # k / 512 with k odd is exactly half-way between two multiples of 1e-8 (1/512 = 0.001953125)
    check([k / 512 for k in range(1, 100_001, 2)])
    check([0.5, 1.5, 2.5, 0.125, 0.375, 2.675, 1.000000005, 1.000000015])


def test_many_prices_of_every_size() -> None:
    rng = random.Random(8)
    values = [math.exp(rng.uniform(math.log(1e-12), math.log(1e7))) for _ in range(200_000)]
    # interpolated paths, as the transform makes them
    for _ in range(2_000):
        start, close = rng.uniform(0, 1000), rng.uniform(0, 1000)
        values += [start + (close - start) * k / 90 for k in range(1, 90)]
    check(values)


def test_the_edges_of_the_fast_path() -> None:
    check(around(FAST_LIMIT, 50))
    check(around(0.0, 50) + around(5e-9, 20) + around(1e-8, 20) + around(0.5e-8, 20))
    check([-1e-9, -0.0, -1.5, -1234.56789012345, math.inf, -math.inf, math.nan, 1e300, 5e-324])


ODD = [-1, -0.5, -0.0, 0, 0.0, 0.5, 2**63 - 1, 2**63, 2**64 - 1, 1e308, math.nan, math.inf]
ODD += [-math.inf, True, False, None, "", "1s", " 1m ", "2x", [], {}]
BAR: dict[str, Any] = {"s": "AAPL", "t": 1699540020, "o": 2.5, "h": 3, "l": 2.0, "c": 2.75}
BAR |= {"v": 4572, "d": "us_stocks_essential", "p": "finazon", "ch": "bars", "f": "1s"}
BAR |= {"aggr": "1m"}


def check_bar(obj: dict[str, Any]) -> None:
    raw = orjson.dumps(obj)
    assert parse_bar(obj, raw) == _check_bar(obj, raw)


@pytest.mark.parametrize("value", [*ODD, DROP], ids=repr)
@pytest.mark.parametrize("key", sorted(BAR))
def test_the_quick_test_of_a_bar_agrees_with_the_full_checks(key: str, value: object) -> None:
    obj = {k: v for k, v in {**BAR, key: value}.items() if v is not DROP}
    check_bar(obj)


@st.composite
def bar_objects(draw: st.DrawFn) -> dict[str, Any]:
    """Bar-like objects: valid ones, with a few fields changed to something odd, or dropped."""
    low, o, c, high = sorted(
        draw(st.lists(st.floats(0, 1e6) | st.integers(0, 10**6), min_size=4, max_size=4))
    )
    obj = {**BAR, "o": o, "h": high, "l": low, "c": c, "v": draw(st.integers(0, 2**64 - 1))}
    odd = st.sampled_from([*ODD, DROP]) | st.floats() | st.integers(-(2**63), 2**64 - 1)
    for key in draw(st.lists(st.sampled_from(sorted(BAR)), max_size=3)):
        obj[key] = draw(odd)
    return {k: v for k, v in obj.items() if v is not DROP}


@settings(max_examples=300)
@given(bar_objects())
def test_the_quick_test_agrees_with_the_full_checks_on_any_bar(obj: dict[str, Any]) -> None:
    check_bar(obj)
