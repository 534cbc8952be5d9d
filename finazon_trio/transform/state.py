"""Per-symbol bar state: what a bar frame changes, and what expanding it needs to know.

With 1 s updates of 1 m bars, each frame updates its symbol's current minute bar: the same
``t`` repeats while ``h``, ``l``, ``c`` and ``v`` move, and a newer ``t`` starts the next bar.
:class:`BarStates` keeps the last state of each symbol and turns each bar into a
:class:`BarUpdate`, which carries everything :func:`~.expand.expand` needs, so that expanding
holds no state of its own (and can run in another process).
"""

from __future__ import annotations

import attrs

from finazon_trio.transform.frames import STALE, Bar, Reject


@attrs.frozen(slots=True)
class BarUpdate:
    """One accepted bar update and its symbol's state before it."""

    bar: Bar
    #: The first update of a bar (its ticks start at the open, not the previous close).
    new_bar: bool
    #: Where the ticks start: the open of a new bar, else the previous update's close.
    start: float
    #: Volume since the previous update of the same bar (the whole volume for a new bar).
    volume_delta: int | float
    #: The bar's high and low before this update (the open, for a new bar).
    prior_high: float
    prior_low: float


@attrs.define
class _State:
    bar_time: int
    close: float
    volume: int | float
    high: float
    low: float


class BarStates:
    """The current bar of each symbol. Not thread-safe: one task owns it."""

    def __init__(self) -> None:
        self._bars: dict[str, _State] = {}

    def bar_time(self, symbol: str) -> int | None:
        """When ``symbol``'s current bar opened (Unix seconds); None before its first bar."""
        state = self._bars.get(symbol)
        return None if state is None else state.bar_time

    def advance(self, bar: Bar) -> BarUpdate | Reject:
        """Apply ``bar``; a bar older than its symbol's current one is a ``stale`` reject."""
        state = self._bars.get(bar.symbol)
        if state is None or bar.bar_time > state.bar_time:
            self._bars[bar.symbol] = _State(bar.bar_time, bar.close, bar.volume, bar.high, bar.low)
            return BarUpdate(bar, True, bar.open, bar.volume, bar.open, bar.open)
        if bar.bar_time == state.bar_time:
            update = BarUpdate(
                bar, False, state.close, bar.volume - state.volume, state.high, state.low
            )
            state.close, state.volume = bar.close, bar.volume
            state.high, state.low = max(state.high, bar.high), min(state.low, bar.low)
            return update
        detail = f"bar time {bar.bar_time} is older than the current bar {state.bar_time}"
        return Reject(STALE, detail, bar.raw.decode(), bar.symbol)
