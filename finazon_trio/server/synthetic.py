"""A deterministic synthetic market: 1 s updates of 1 m bars for any ticker, and recordings of it.

Each ticker follows its own geometric random walk, seeded by ``(seed, ticker)`` alone, so its
prices do not depend on which other tickers exist or in which order they were asked for. Updates
behave like Finazon's: ``t`` (the bar's open time) repeats through the minute while ``h``, ``l``,
``c`` and ``v`` move, and the next bar opens at the previous close. The data is made up; nothing
here is a real market price.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson

from finazon_trio.errors import ConfigurationError
from finazon_trio.events import Lifecycle, Received, Sent, SourceEvent
from finazon_trio.recording import RecordingHeader, write_recording
from finazon_trio.settings import (
    DEFAULT_AGGREGATION,
    DEFAULT_CHANNEL,
    DEFAULT_DATASET,
    DEFAULT_FREQUENCY,
    DEFAULT_PROVIDER,
    DEFAULT_URL,
    interval_ms,
)

Frame = dict[str, Any]

_NS = 1_000_000_000
#: Rough price levels of a few well-known tickers (late 2024), so samples look familiar: they
#: start within 3 % of these. Any other ticker starts at a seeded price between 10 and 500.
_START_PRICES = {
    "AAPL": 227.0,
    "MSFT": 422.0,
    "GOOGL": 178.0,
    "AMZN": 208.0,
    "TSLA": 321.0,
    "NVDA": 147.0,
    "META": 589.0,
    "BTC/USDT": 76_000.0,
    "ETH/USDT": 2_900.0,
}
#: Trading seconds in a year, to turn an annual volatility into a per-second one.
_STOCK_SECONDS_PER_YEAR = 252 * 6.5 * 3600
_CRYPTO_SECONDS_PER_YEAR = 365 * 24 * 3600.0
#: Closed bars each ticker keeps for :meth:`SyntheticMarket.closed_bars` (the REST endpoint):
#: Finazon's reported depth of 1-minute history.
HISTORY_BARS = 1000


@attrs.define
class _Walk:
    """One ticker's state: its random source, unrounded price and current bar frame."""

    rng: random.Random
    crypto: bool
    decimals: int
    sigma: float  # standard deviation of the log return over one second
    volume_rate: float  # mean volume per second
    price: float
    second: int = 0  # of the last update; meaningful once ``frame`` is set
    frame: Frame | None = None
    #: The final state of each closed bar, oldest first (at most :data:`HISTORY_BARS`).
    closed: deque[Frame] = attrs.field(factory=lambda: deque(maxlen=HISTORY_BARS))


class SyntheticMarket:
    """Synthetic Finazon bar frames, per ticker, at whole Unix seconds.

    Call :meth:`frames` (or :meth:`frame`) once per update interval with the current second;
    seconds must not go backwards for a ticker. Asking again for the same second returns the
    same frame, so several clients of one server see the same market. The market runs on while
    nobody asks: a later second is reached update by update (one per ``frequency``), so every
    bar in between has its final state, which :meth:`closed_bars` serves (the REST endpoint).
    A ticker containing ``/`` (``BTC/USDT``) is treated as crypto: finer price steps,
    fractional volume, 24 h volatility.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        dataset: str = DEFAULT_DATASET,
        frequency: str = DEFAULT_FREQUENCY,
        aggregation: str = DEFAULT_AGGREGATION,
    ) -> None:
        bar_ms = interval_ms(aggregation)
        if bar_ms is None or bar_ms % 1000:
            raise ConfigurationError(f"aggregation {aggregation!r} is not whole seconds")
        self.seed = seed
        self.dataset = dataset
        self.frequency = frequency
        self.aggregation = aggregation
        self._bar_s = bar_ms // 1000
        step_ms = interval_ms(frequency)
        self._step_s = max(1, (step_ms or 1000) // 1000)
        self._walks: dict[str, _Walk] = {}

    def frames(self, tickers: Iterable[str], now_s: int) -> list[Frame]:
        """The update at Unix second ``now_s`` for each ticker, in the order given."""
        return [self.frame(ticker, now_s) for ticker in tickers]

    def frame(self, ticker: str, now_s: int) -> Frame:
        """The flat bar frame of ``ticker`` at Unix second ``now_s`` (a fresh dict).

        A ticker seen for the first time mid-bar has that bar's earlier seconds simulated
        too, as a real subscription joining mid-minute gets the bar so far.
        """
        walk = self._walks.get(ticker)
        if walk is None:
            walk = self._walks[ticker] = self._new_walk(ticker)
            for second in range(now_s - now_s % self._bar_s, now_s):
                self._advance(walk, ticker, second)
        elif now_s <= walk.second:
            assert walk.frame is not None
            return dict(walk.frame)
        else:
            self._catch_up(walk, ticker, now_s)
        return dict(self._advance(walk, ticker, now_s))

    def closed_bars(self, ticker: str, now_s: int) -> list[Frame]:
        """The final state of each of ``ticker``'s bars that closed before Unix second
        ``now_s``, oldest first (at most :data:`HISTORY_BARS`; fresh dicts).

        The market is first run on to the last update before ``now_s``'s bar, so a bar that
        no client saw close is here too. A ticker never asked for has no history yet.
        """
        walk = self._walks.get(ticker)
        if walk is None:
            return []
        last = now_s - now_s % self._bar_s - self._step_s  # the previous bar's last update
        if last > walk.second:
            self._catch_up(walk, ticker, last)
            self._advance(walk, ticker, last)
        bars = [dict(frame) for frame in walk.closed]
        frame = walk.frame
        if frame is not None and walk.second >= frame["t"] + self._bar_s - self._step_s:
            bars.append(dict(frame))  # its last update is done: final, though no newer bar yet
        return bars[-HISTORY_BARS:]

    def _catch_up(self, walk: _Walk, ticker: str, now_s: int) -> None:
        """Run the market on, one update per ``frequency``, to just before ``now_s`` (at most
        :data:`HISTORY_BARS` bars back: older ones could not be served anyway)."""
        step = self._step_s
        second = walk.second + step
        horizon = now_s - now_s % self._bar_s - HISTORY_BARS * self._bar_s
        if second < horizon:
            second = horizon
        while second < now_s:
            self._advance(walk, ticker, second)
            second += step

    def _advance(self, walk: _Walk, ticker: str, now_s: int) -> Frame:
        previous = walk.frame
        elapsed = 1 if previous is None else now_s - walk.second
        bar_t = now_s - now_s % self._bar_s
        if previous is not None and previous["t"] != bar_t:
            walk.closed.append(previous)
        if previous is None or previous["t"] != bar_t:
            open_ = round(walk.price, walk.decimals) if previous is None else previous["c"]
            high = low = open_
            volume: float = 0
        else:
            open_, high, low, volume = previous["o"], previous["h"], previous["l"], previous["v"]
        walk.second = now_s
        walk.price *= math.exp(walk.sigma * math.sqrt(elapsed) * walk.rng.gauss(0.0, 1.0))
        close = round(walk.price, walk.decimals)
        traded = walk.volume_rate * elapsed * walk.rng.lognormvariate(-0.32, 0.8)
        volume = round(volume + traded, 4) if walk.crypto else volume + round(traded)
        walk.frame = {
            "d": self.dataset,
            "p": DEFAULT_PROVIDER,
            "ch": DEFAULT_CHANNEL,
            "f": self.frequency,
            "aggr": self.aggregation,
            "s": ticker,
            "t": bar_t,
            "o": open_,
            "h": max(high, close),
            "l": min(low, close),
            "c": close,
            "v": volume,
        }
        return walk.frame

    def _new_walk(self, ticker: str) -> _Walk:
        rng = random.Random(f"finazon-trio:{self.seed}:{ticker}")
        crypto = "/" in ticker
        known = _START_PRICES.get(ticker)
        low, high = (known * 0.97, known * 1.03) if known else (10.0, 500.0)
        price = math.exp(rng.uniform(math.log(low), math.log(high)))
        if crypto:
            annual, seconds = rng.uniform(0.45, 0.9), _CRYPTO_SECONDS_PER_YEAR
            decimals = 2 if price >= 100 else 4 if price >= 1 else 8
            volume_rate = rng.uniform(0.05, 5.0) * 1000 / price
        else:
            annual, seconds = rng.uniform(0.2, 0.6), _STOCK_SECONDS_PER_YEAR
            decimals = 2
            volume_rate = math.exp(rng.uniform(math.log(100), math.log(3000)))
        return _Walk(
            rng=rng,
            crypto=crypto,
            decimals=decimals,
            sigma=annual / math.sqrt(seconds),
            volume_rate=volume_rate,
            price=price,
        )


def subscribe_text(
    dataset: str,
    tickers: Sequence[str],
    *,
    frequency: str = DEFAULT_FREQUENCY,
    aggregation: str = DEFAULT_AGGREGATION,
) -> str:
    """The client's ``subscribe`` event for these tickers, as sent on the WebSocket."""
    return _json({"event": "subscribe", **_subscription(dataset, tickers, frequency, aggregation)})


def subscribed_text(
    dataset: str,
    tickers: Sequence[str],
    *,
    frequency: str = DEFAULT_FREQUENCY,
    aggregation: str = DEFAULT_AGGREGATION,
) -> str:
    """The server's acknowledgement of that subscription."""
    data = _subscription(dataset, tickers, frequency, aggregation)
    return _json({"status": "success", "code": "SUCCESS_SUBSCRIPTION", "data": data})


def generate_recording(
    path: Path,
    tickers: Sequence[str],
    *,
    minutes: int = 3,
    seed: int = 0,
    start_s: int | None = None,
    dataset: str = DEFAULT_DATASET,
    url: str = DEFAULT_URL,
) -> Path:
    """Write a recording of a synthetic session, as a live run would have written it.

    One connection: ``connected``, the ``subscribe`` frame sent, its acknowledgement, then one
    frame per ticker per second from ``start_s`` (Unix seconds; now when None) for ``minutes``
    minutes, each received a few tens of milliseconds into its second, and ``disconnected``.
    The same ``seed`` and ``start_s`` give the same bytes.
    """
    tickers = list(dict.fromkeys(tickers))
    if not tickers:
        raise ConfigurationError("a synthetic recording needs at least one ticker")
    if minutes < 1:
        raise ConfigurationError(f"--minutes must be at least 1, not {minutes}")
    start = int(time.time()) if start_s is None else start_s
    connected_ns = (start - 1) * _NS + 250_000_000
    header = RecordingHeader(
        created_ns=connected_ns - 50_000_000, url=url, dataset=dataset, tickers=tuple(tickers)
    )
    write_recording(path, header, _session(connected_ns, start, minutes, seed, dataset, tickers))
    return path


def _session(
    connected_ns: int, start: int, minutes: int, seed: int, dataset: str, tickers: list[str]
) -> Iterator[SourceEvent]:
    rng = random.Random(f"finazon-trio:{seed}:network")
    market = SyntheticMarket(seed, dataset=dataset)
    yield Lifecycle(connected_ns, 1, "connected")
    yield Sent(connected_ns + 1_200_000, 1, subscribe_text(dataset, tickers))
    yield Received(connected_ns + 48_000_000, 1, subscribed_text(dataset, tickers))
    # Frames of one second arrive in a burst a little after the second, spaced within it.
    spacing_ns = min(400_000, 700_000_000 // len(tickers))
    end = start + minutes * 60
    for second in range(start, end):
        t_ns = second * _NS + int(rng.uniform(15e6, 120e6))
        for frame in market.frames(tickers, second):
            t_ns += rng.randint(spacing_ns // 4, spacing_ns)
            yield Received(t_ns, 1, _json(frame))
    yield Lifecycle(end * _NS + 200_000_000, 1, "disconnected", "closed by the client (shutdown)")


def _subscription(
    dataset: str, tickers: Sequence[str], frequency: str, aggregation: str
) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "tickers": list(tickers),
        "channel": DEFAULT_CHANNEL,
        "frequency": frequency,
        "aggregation": aggregation,
    }


def _json(obj: object) -> str:
    return orjson.dumps(obj).decode()
