"""``finazon-trio tail``: read the output topics back, a small kcat for this data.

One line per record, ``TOPIC<TAB>KEY<TAB>EVENT TIME (ISO, UTC)<TAB>VALUE``, or with a chart
symbol a live chart of its ticks and bars (:mod:`.chart`). The consumer is librdkafka's: each
poll runs in a worker thread for at most :data:`POLL_SECONDS`, never on the trio thread. It
assigns every partition of the topics itself (no consumer group, nothing committed), from the
beginning or from the end.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections import deque
from typing import TextIO

import attrs
import orjson
import trio
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as ClientError
from confluent_kafka import Message as KafkaMessage
from rich.console import Console
from rich.live import Live
from rich.text import Text

from finazon_trio.errors import FinazonTrioError, KafkaError
from finazon_trio.observe.chart import Bar, Tick, render_chart
from finazon_trio.sink.admin import ADMIN_TIMEOUT, Config, endpoint_of, reason, wait_for_kafka

logger = logging.getLogger(__name__)

#: Seconds one poll may block its worker thread: also how soon Ctrl-C is obeyed.
POLL_SECONDS = 0.2
#: Records taken per poll.
POLL_BATCH = 1000
#: Chart redraws per second.
CHART_FPS = 4
#: What the chart keeps of the symbol: the newest ticks and bars.
CHART_TICKS = 100_000
CHART_BARS = 500


class TailError(FinazonTrioError):
    """Nothing to tail: a topic that does not exist, a symbol that never appears."""


@attrs.frozen
class TailOptions:
    topics: tuple[str, ...]
    #: Only records with this key.
    symbol: str | None = None
    from_beginning: bool = False
    #: Stop after this many records (printed, or read for the chart).
    count: int | None = None
    #: Draw this symbol's chart instead of printing lines.
    chart: str | None = None

    @property
    def key(self) -> bytes | None:
        wanted = self.chart or self.symbol
        return None if wanted is None else wanted.encode()


def iso_time(epoch_ms: int) -> str:
    """``2024-11-08T15:40:31.000Z``."""
    moment = dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def format_line(topic: str, key: bytes | None, epoch_ms: int, value: bytes | None) -> str:
    """One record as a line: topic, key, event time, value (bytes that are not UTF-8 escaped)."""
    text = (value or b"").decode(errors="backslashreplace").replace("\n", "\\n")
    name = (key or b"").decode(errors="backslashreplace")
    return f"{topic}\t{name}\t{iso_time(epoch_ms)}\t{text}"


def chart_point(value: bytes | None) -> Tick | Bar | None:
    """A price tick, a bar (a descriptive bar event or a raw Finazon bar), or neither."""
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    try:
        if "price" in obj:
            return Tick(int(obj["timestamp"]), float(obj["price"]))
        if "bar_time" in obj:
            prices = (obj[k] for k in ("open_price", "high_price", "low_price", "close_price"))
            return Bar(int(obj["bar_time"]), *map(float, prices))
        if "t" in obj:
            return Bar(int(obj["t"]), *(float(obj[k]) for k in "ohlc"))
    except (KeyError, TypeError, ValueError):
        return None
    return None


class _Chart:
    """The chart's data, owned by the reading task; the drawing task renders a snapshot."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.ticks: deque[Tick] = deque(maxlen=CHART_TICKS)
        self.bars: dict[int, Bar] = {}

    def add(self, point: Tick | Bar) -> None:
        if isinstance(point, Tick):
            self.ticks.append(point)
            return
        self.bars[point.time_s] = point
        if len(self.bars) > CHART_BARS:
            del self.bars[min(self.bars)]

    def render(self, width: int, height: int) -> Text:
        bars = [self.bars[t] for t in sorted(self.bars)]
        return render_chart(self.symbol, list(self.ticks), bars, width, height)


async def tail(config: Config, wait: float, options: TailOptions, out: TextIO) -> None:
    """Print (or chart) the records of ``options.topics`` until ``options.count`` of them, or
    until cancelled (Ctrl-C), which returns within :data:`POLL_SECONDS`.

    Raises :class:`KafkaError` if the cluster does not answer within ``wait`` seconds,
    :class:`TailError` if a topic does not exist or, reading from the beginning, the symbol
    appears nowhere once the end of every partition is reached.
    """
    await wait_for_kafka(config, wait)
    consumer = await trio.to_thread.run_sync(_open, config, options)
    try:
        endpoint = endpoint_of(config)
        if options.chart is None:
            await _print(consumer, options, out, endpoint)
        else:
            await _chart(consumer, options, out, endpoint)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(consumer.close)


def _open(config: Config, options: TailOptions) -> Consumer:
    """A consumer assigned to every partition of the topics (blocking: run in a thread)."""
    consumer = Consumer(
        {
            **config,
            "group.id": f"finazon-trio-tail-{os.getpid()}-{time.time_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "log_level": 0,
        }
    )
    try:
        metadata = consumer.list_topics(timeout=ADMIN_TIMEOUT)
    except KafkaException as exc:
        consumer.close()
        raise KafkaError(
            f"cannot list the topics of {endpoint_of(config)}: {reason(exc)}"
        ) from None
    missing = [t for t in options.topics if t not in metadata.topics]
    if missing:
        consumer.close()
        there = sorted(t for t in metadata.topics if not t.startswith("__"))
        raise TailError(
            f"no topic {', '.join(missing)} at {endpoint_of(config)} (its topics: "
            f"{', '.join(there) or 'none'}); name one with --topic"
        )
    partitions = []
    try:
        for topic in options.topics:
            for partition in sorted(metadata.topics[topic].partitions):
                # The end as of now, not as of the first fetch: what is produced after this
                # returns is shown.
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=ADMIN_TIMEOUT
                )
                start = low if options.from_beginning else high
                partitions.append(TopicPartition(topic, partition, start))
    except KafkaException as exc:
        consumer.close()
        raise KafkaError(
            f"cannot read the offsets at {endpoint_of(config)}: {reason(exc)}"
        ) from None
    consumer.assign(partitions)
    if options.from_beginning:
        logger.info(
            "reading %s at %s from the beginning", ", ".join(options.topics), endpoint_of(config)
        )
    return consumer


class _Reader:
    """Polls in a worker thread; keeps count, tracks the end of the history and the keys seen.

    From the end, a partition's records count only once its end has been reached (its first
    end-of-partition event), and the log says when every partition's has: a broker may name an
    end that lies before its last records (Tansu 0.6 answers a ListOffsets for the latest offset
    with the start of its last batch), and what comes before the real end is old.
    """

    def __init__(self, consumer: Consumer, options: TailOptions, endpoint: str) -> None:
        self.endpoint = endpoint
        self.consumer = consumer
        self.options = options
        self.taken = 0
        self.keys: set[bytes] = set()
        self._at_end: set[tuple[str, int]] = set()
        self._checked = not (options.from_beginning and options.key is not None)
        self.partitions = len(consumer.assignment())

    @property
    def done(self) -> bool:
        return self.options.count is not None and self.taken >= self.options.count

    async def batch(self) -> list[KafkaMessage]:
        """The next records for the key (if any), at most what ``count`` still allows."""
        polled = await trio.to_thread.run_sync(self.consumer.consume, POLL_BATCH, POLL_SECONDS)
        wanted = self.options.key
        out = []
        for message in polled:
            error = message.error()
            where = (message.topic() or "", message.partition() or 0)
            if error is not None:
                if error.code() == ClientError._PARTITION_EOF:
                    self._reached_end(where)
                    continue
                if error.fatal() or error.code() == ClientError.UNKNOWN_TOPIC_OR_PART:
                    raise KafkaError(f"reading {message.topic()} failed: {error.str()}")
                logger.warning("reading %s: %s", message.topic(), error.str())
                continue
            if not self.options.from_beginning and where not in self._at_end:
                continue  # older than the end (see the class's docstring)
            key = message.key()
            if isinstance(key, bytes):
                self.keys.add(key)
            if wanted is not None and key != wanted:
                continue
            if self.done:
                break
            out.append(message)
            self.taken += 1
        self._check_symbol()
        return out

    def _reached_end(self, where: tuple[str, int]) -> None:
        if where in self._at_end:
            return
        self._at_end.add(where)
        if not self.options.from_beginning and len(self._at_end) == self.partitions:
            logger.info(
                "reading %s at %s from the end; Ctrl-C stops",
                ", ".join(self.options.topics),
                self.endpoint,
            )

    def _check_symbol(self) -> None:
        if self._checked or len(self._at_end) < self.partitions:
            return
        self._checked = True
        wanted = self.options.key
        if wanted in self.keys:
            return
        seen = ", ".join(sorted(k.decode(errors="replace") for k in self.keys)) or "none"
        raise TailError(
            f"no record of symbol {self.options.chart or self.options.symbol} in "
            f"{', '.join(self.options.topics)} (the symbols there: {seen})"
        )


async def _print(consumer: Consumer, options: TailOptions, out: TextIO, endpoint: str) -> None:
    reader = _Reader(consumer, options, endpoint)
    while not reader.done:
        messages = await reader.batch()
        if not messages:
            continue
        lines = "".join(
            format_line(m.topic() or "", m.key(), m.timestamp()[1], m.value()) + "\n"
            for m in messages
        )
        if not await trio.to_thread.run_sync(_write, out, lines):
            return  # the reader went away (a closed pipe): nothing more to do


def _write(out: TextIO, text: str) -> bool:
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        # Python would complain once more when it flushes stdout at exit: point it elsewhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return False
    return True


async def _chart(consumer: Consumer, options: TailOptions, out: TextIO, endpoint: str) -> None:
    assert options.chart is not None
    chart = _Chart(options.chart)
    reader = _Reader(consumer, options, endpoint)
    console = Console(file=out)

    def draw() -> Text:
        return chart.render(console.width, console.height)

    with Live(console=console, auto_refresh=False, vertical_overflow="crop") as live:
        async with trio.open_nursery() as nursery:

            async def redraw() -> None:
                while True:
                    live.update(draw(), refresh=True)
                    await trio.sleep(1 / CHART_FPS)

            nursery.start_soon(redraw)
            while not reader.done:
                for message in await reader.batch():
                    point = chart_point(message.value())
                    if point is not None:
                        chart.add(point)
            live.update(draw(), refresh=True)
            nursery.cancel_scope.cancel()
