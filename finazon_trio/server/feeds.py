"""Where ``finazon-trio serve`` gets its bars: a recording or the synthetic market.

Both run on one clock per server, shared by every client, so a client that reconnects finds
the market where it left it (bars never go back in time) and all clients see the same frames.
"""

from __future__ import annotations

import bisect
import math
import random
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import orjson
import trio

from finazon_trio.errors import RecordingError
from finazon_trio.events import Received
from finazon_trio.recording import iter_entries
from finazon_trio.server.synthetic import SyntheticMarket
from finazon_trio.settings import DEFAULT_FREQUENCY, interval_ms

if TYPE_CHECKING:
    from finazon_trio.server.config import ServerConfig

#: Bars per ``{"ch": "bars", "data": [...]}`` message (keeps messages far below 1 MiB).
WRAP_BATCH = 100
#: The bar size the REST endpoint serves (``interval=1m``).
REST_AGGREGATION = "1m"
_WELL_FORMED = re.compile(r"^[A-Z0-9]{1,12}(?:[./:-][A-Z0-9]{1,12})?$")


class FeedClient(Protocol):
    """What a feed needs of a client session."""

    tickers: dict[str, None]
    dataset: str
    frequency: str
    aggregation: str
    changed: trio.Event

    async def send_bar(self, text: str) -> None: ...


class Feed(Protocol):
    """A source of bar frames for the server's clients."""

    def describe(self) -> str: ...

    def knows(self, ticker: str) -> bool: ...

    def check(self, params: dict[str, str]) -> str | None:
        """Why a subscription's dataset/frequency/aggregation cannot be served, or None."""

    async def stream(self, client: FeedClient) -> None:
        """Send the client its subscribed tickers' frames until cancelled."""

    def minute_bars(self, ticker: str, dataset: str) -> list[dict[str, Any]]:
        """The final state of each closed bar of ``ticker`` so far, oldest first, as the REST
        endpoint serves them (the same market the WebSocket streams)."""


async def load_feed(config: ServerConfig) -> Feed:
    """The feed ``config`` asks for (a recording is read in a worker thread)."""
    clock = _Clock(config.speed, config.start_time)
    if config.recording is None:
        return SyntheticFeed(config, clock)
    frames = await trio.to_thread.run_sync(load_recorded_frames, config.recording)
    return RecordingFeed(config.recording, frames, clock, loop=config.loop)


class _Clock:
    """Simulated seconds since the server started: real seconds times ``speed``."""

    def __init__(self, speed: float, start_time: float | None) -> None:
        self.speed = speed
        self.origin = trio.current_time()
        self.unix_origin = time.time() if start_time is None else start_time

    def elapsed(self) -> float:
        return (trio.current_time() - self.origin) * self.speed

    def at(self, elapsed: float) -> float:
        """The trio time at which ``elapsed`` simulated seconds will have passed."""
        return self.origin + elapsed / self.speed


def _encode(obj: object) -> str:
    return orjson.dumps(obj).decode()


class SyntheticFeed:
    """Seeded synthetic bars for any well-formed ticker, one update per ``frequency``."""

    def __init__(self, config: ServerConfig, clock: _Clock) -> None:
        self.seed = config.seed
        self.style = config.frame_style
        self.clock = clock
        self._markets: dict[tuple[str, str, str], SyntheticMarket] = {}

    def describe(self) -> str:
        return f"synthetic market, seed {self.seed}, speed {self.clock.speed:g}"

    def knows(self, ticker: str) -> bool:
        return _WELL_FORMED.match(ticker) is not None

    def check(self, params: dict[str, str]) -> str | None:
        for name in ("frequency", "aggregation"):
            ms = interval_ms(params[name])
            if ms is None or ms % 1000:
                return f"{name.capitalize()} {params[name][:20]} is not supported"
        return None

    async def stream(self, client: FeedClient) -> None:
        last = -math.inf
        while True:
            while not client.tickers:
                await client.changed.wait()
            step_ms = interval_ms(client.frequency)
            assert step_ms is not None  # checked when subscribing
            step = step_ms // 1000
            now = self.clock.unix_origin + self.clock.elapsed()
            second = last + step
            if second <= now - step:  # the first update, or more than one behind: skip ahead
                second = (now // step + 1) * step
            await trio.sleep_until(self.clock.at(second - self.clock.unix_origin))
            if not client.tickers:
                continue
            frames = self._market(client).frames(list(client.tickers), int(second))
            for text in self._texts(frames):
                await client.send_bar(text)
            last = second

    def minute_bars(self, ticker: str, dataset: str) -> list[dict[str, Any]]:
        # The market of a 1-minute subscription to this dataset (any frequency, 1 s first).
        keys = sorted(
            (key for key in self._markets if key[0] == dataset and key[2] == REST_AGGREGATION),
            key=lambda key: key[1] != DEFAULT_FREQUENCY,
        )
        if not keys:
            return []
        now_s = int(self.clock.unix_origin + self.clock.elapsed())
        return self._markets[keys[0]].closed_bars(ticker, now_s)

    def _market(self, client: FeedClient) -> SyntheticMarket:
        key = (client.dataset, client.frequency, client.aggregation)
        market = self._markets.get(key)
        if market is None:
            market = self._markets[key] = SyntheticMarket(
                self.seed,
                dataset=client.dataset,
                frequency=client.frequency,
                aggregation=client.aggregation,
            )
        return market

    def _texts(self, frames: list[dict[str, Any]]) -> list[str]:
        if self.style == "wrapped":
            batches = (frames[i : i + WRAP_BATCH] for i in range(0, len(frames), WRAP_BATCH))
            return [_encode({"ch": "bars", "data": batch}) for batch in batches]
        if self.style == "legacy":
            for frame in frames:
                del frame["d"]
                frame["aggr"] = " " + frame["aggr"]
        return [_encode(frame) for frame in frames]


@attrs.frozen
class RecordedFrame:
    """A received bar frame of a recording: flat (one bar) or ``data``-wrapped (several)."""

    #: Seconds after the recording's first frame.
    offset: float
    text: str
    obj: dict[str, Any]
    bars: list[dict[str, Any]]
    wrapped: bool


def load_recorded_frames(path: Path) -> list[RecordedFrame]:
    """The bar frames a recording received, in order (blocking: run it in a thread)."""
    frames: list[RecordedFrame] = []
    first_ns: int | None = None
    for entry in iter_entries(path):
        if not isinstance(entry, Received):
            continue
        try:
            obj = orjson.loads(entry.text)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        data = obj.get("data")
        if isinstance(obj.get("s"), str):
            bars, wrapped = [obj], False
        elif isinstance(data, list):
            bars = [b for b in data if isinstance(b, dict) and isinstance(b.get("s"), str)]
            wrapped = True
        else:
            continue  # a protocol message
        if not bars:
            continue
        first_ns = entry.t_ns if first_ns is None else first_ns
        frames.append(RecordedFrame((entry.t_ns - first_ns) / 1e9, entry.text, obj, bars, wrapped))
    if not frames:
        raise RecordingError(f"{path} holds no bar frames to serve")
    return frames


class RecordingFeed:
    """A recording's bar frames on the server's timeline, optionally looped.

    Each lap shifts the bars' ``t`` by a whole number of minutes past the recording's span, so
    that bar times keep increasing; the first lap sends the recorded texts unchanged.
    """

    def __init__(
        self, path: Path, frames: list[RecordedFrame], clock: _Clock, *, loop: bool
    ) -> None:
        self.path = path
        self.frames = frames
        self.clock = clock
        self.loop = loop
        self.offsets = [frame.offset for frame in frames]
        self.tickers = frozenset(bar["s"] for frame in frames for bar in frame.bars)
        #: Seconds per lap: the recording's length plus a second.
        self.period = self.offsets[-1] + 1.0
        times = [b["t"] for f in frames for b in f.bars if isinstance(b.get("t"), int)]
        self.shift = ((max(times) - min(times)) // 60 + 1) * 60 if times else 0
        #: Per ticker, each bar's last recorded update and its offset, in bar order.
        self.finals: dict[str, dict[int, tuple[float, dict[str, Any]]]] = {}
        for frame in frames:
            for bar in frame.bars:
                if isinstance(bar.get("t"), int):
                    self.finals.setdefault(bar["s"], {})[bar["t"]] = (frame.offset, bar)

    def describe(self) -> str:
        laps = "looping" if self.loop else "once"
        return f"{self.path.name}: {len(self.frames)} frames, speed {self.clock.speed:g}, {laps}"

    def knows(self, ticker: str) -> bool:
        return ticker in self.tickers

    def check(self, params: dict[str, str]) -> str | None:
        return None

    async def stream(self, client: FeedClient) -> None:
        while True:
            while not client.tickers:
                await client.changed.wait()
            elapsed = self.clock.elapsed()
            lap = int(elapsed // self.period) if self.loop else 0
            index = bisect.bisect_left(self.offsets, elapsed - lap * self.period)
            while client.tickers:
                if index == len(self.frames):
                    if not self.loop:
                        await trio.sleep_forever()
                    lap, index = lap + 1, 0
                frame = self.frames[index]
                await trio.sleep_until(self.clock.at(lap * self.period + frame.offset))
                text = self._text(frame, client.tickers, lap)
                if text is not None:
                    await client.send_bar(text)
                index += 1

    def minute_bars(self, ticker: str, dataset: str) -> list[dict[str, Any]]:
        """The recording's bars aggregated to their last update, each once the server's
        timeline has passed that update (each lap's bars shifted as streamed)."""
        finals = self.finals.get(ticker, {})
        elapsed = self.clock.elapsed()
        laps = int(elapsed // self.period) + 1 if self.loop else 1
        bars: list[dict[str, Any]] = []
        for lap in range(laps):
            for t, (offset, bar) in sorted(finals.items()):
                if lap * self.period + offset <= elapsed:
                    bars.append({**bar, "t": t + lap * self.shift})
        return bars

    def _text(self, frame: RecordedFrame, tickers: dict[str, None], lap: int) -> str | None:
        bars = [bar for bar in frame.bars if bar["s"] in tickers]
        if not bars:
            return None
        if lap == 0 and len(bars) == len(frame.bars):
            return frame.text
        shift = lap * self.shift
        bars = [
            {**bar, "t": bar["t"] + shift} if isinstance(bar.get("t"), int) else bar for bar in bars
        ]
        return _encode({**frame.obj, "data": bars} if frame.wrapped else bars[0])


def garbage_frame(rng: random.Random, sample: str) -> str:
    """A malformed frame in the style of ``sample``: cut short, not JSON, not an object, or a
    bar with a missing field, a wrong type or its high below its low."""
    kind = rng.randrange(6)
    if kind == 1:
        return "not json at all"
    if kind == 2:
        return "[1, 2, 3]"
    try:
        bar = orjson.loads(sample)
    except orjson.JSONDecodeError:
        bar = None
    if kind >= 3 and isinstance(bar, dict) and "c" in bar and isinstance(bar.get("l"), int | float):
        if kind == 3:
            del bar["c"]
        elif kind == 4:
            bar["c"] = "not a number"
        else:
            bar["h"] = bar["l"] - 1
        return _encode(bar)
    return sample[: max(1, len(sample) // 2)]
