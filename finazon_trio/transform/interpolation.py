"""The price paths and tick times of the output contract: pure functions over numbers.

A frame that continues its bar is drawn from the previous close ``p0`` (excluded) to the close
``c``; the first frame of a bar from its open ``o`` (included) to ``c``. Prices are rounded to
:data:`DECIMALS` places, except the last one, which is exactly ``c``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

DECIMALS = 8
_SCALE = 10.0**DECIMALS
#: Adding and subtracting 1.5 * 2**52 rounds a float below 2**51 to an integer, half to even:
#: in [2**52, 2**53) consecutive floats are exactly 1 apart.
_TO_INTEGER = 1.5 * 2.0**52
_FAST_BELOW = 2.0**51


def round_prices(values: Sequence[float]) -> list[float]:
    """``[round(x, DECIMALS) for x in values]``, bit for bit, in a third of the time.

    ``round(x, 8)`` goes through a decimal string and back. The same result comes from rounding
    the product ``y = x * 1e8`` to an integer ``r`` and dividing by 1e8 (both exact below 2**51:
    prices up to 22 million), but for one case. ``round`` rounds the exact product, and ``y`` is
    the product rounded to a float; below 2**52 every half-integer is a float, and rounding never
    jumps over a float, so ``y`` lies on the same side of every half as the exact product, or on
    the half itself. Only then (ties included), and for zero, negative, huge or non-finite
    values, does this call ``round``. (A frame's 89 rounded prices: 61 -> 22 us; ``round`` was
    40% of the transform's time. ``tests/transform/test_fast_paths.py`` checks the equality.)
    """
    return [
        r / _SCALE if 0.0 < y < _FAST_BELOW and -0.5 < y - r < 0.5 else round(x, DECIMALS)
        for x in values
        for y in (x * _SCALE,)
        for r in (y + _TO_INTEGER - _TO_INTEGER,)
    ]


def linear_path(start: float, close: float, n: int, *, include_start: bool) -> list[float]:
    """``n`` prices on the straight line from ``start`` to ``close``.

    ``include_start=False`` (a continuing frame): ``P_i = p0 + (c - p0) * i / N``, ``i = 1..N``.
    ``include_start=True`` (a new bar): ``P_i = o + (c - o) * (i - 1) / (N - 1)``; ``[c]`` if N = 1.
    """
    first, steps = (0, n - 1) if include_start else (1, n)
    if steps == 0:
        return [close]
    span = close - start
    if math.isfinite(span * steps):
        path = round_prices([start + span * k / steps for k in range(first, first + n - 1)])
    else:  # prices near the float limit, where span * k would overflow
        step = span / steps
        path = round_prices([start + step * k for k in range(first, first + n - 1)])
    path.append(close)
    return path


def new_extremes(
    start: float, high: float, low: float, *, prior_high: float, prior_low: float
) -> tuple[float, ...]:
    """The extremes a path from ``start`` must visit, nearer first.

    ``high`` is visited if it exceeds ``prior_high`` (the bar's high before this frame, or its
    open for a new bar), ``low`` if it is below ``prior_low``; when both, the one nearer to
    ``start`` comes first (the high on a tie).
    """
    new_high, new_low = high > prior_high, low < prior_low
    if new_high and new_low:
        return (high, low) if high - start <= start - low else (low, high)
    if new_high:
        return (high,)
    if new_low:
        return (low,)
    return ()


def extremes_path(
    start: float, close: float, via: Sequence[float], n: int, *, include_start: bool
) -> list[float]:
    """``n`` prices along the polyline ``start → via... → close``, spread by distance travelled.

    Points sit where :func:`linear_path` puts them, measured in distance along the polyline
    instead of in price. Without ``via``, or with no distance to travel (every point is then
    ``close``), this is :func:`linear_path`.
    """
    corners = (start, *via, close)
    lengths = [abs(b - a) for a, b in itertools.pairwise(corners)]
    longest = max(lengths)
    if longest == 0 or not via:
        return linear_path(start, close, n, include_start=include_start)
    first, steps = (0, n - 1) if include_start else (1, n)
    if steps == 0:
        return [close]
    # Distances in units of the longest segment, so that the total cannot overflow.
    ends = list(itertools.accumulate(length / longest for length in lengths))
    raw: list[float] = []
    segment = 0
    for k in range(first, first + n - 1):
        travelled = ends[-1] * k / steps
        while travelled > ends[segment] and segment < len(ends) - 1:
            segment += 1
        begins = ends[segment - 1] if segment else 0.0
        width = ends[segment] - begins
        fraction = min((travelled - begins) / width, 1.0) if width else 1.0
        a, b = corners[segment], corners[segment + 1]
        raw.append(a + (b - a) * fraction)
    path = round_prices(raw)
    path.append(close)
    return path


@functools.lru_cache(maxsize=64)
def tick_offsets(w: int, n: int) -> tuple[int, ...]:
    """``T_i - e`` for ``i = 1..N``: ``-W + (i * W) // N``, the last one 0."""
    return tuple(-w + (i * w) // n for i in range(1, n + 1))


def tick_times(e: int, w: int, n: int) -> list[int]:
    """``T_i = e - W + (i * W) // N`` for ``i = 1..N``: spread over the update's interval."""
    return [e + offset for offset in tick_offsets(w, n)]
