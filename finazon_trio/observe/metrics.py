"""Counters the stages keep and the dashboard, the log and the summary read.

Each field has exactly one writer (the stage named in its section); readers take a
:meth:`Metrics.snapshot`, a frozen copy, and never hold on to the live object.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections import Counter
from typing import Any, Final, Protocol

import attrs

#: Upper bounds (ms) of the latency histogram buckets in :class:`PublisherMetrics`: four per
#: doubling from 1 ms to about 55 s; the last bucket also holds everything slower.
LATENCY_BUCKETS_MS: Final[tuple[float, ...]] = tuple(2 ** (i / 4) for i in range(64))


class SourceState(enum.StrEnum):
    """What the source is doing. A live run's state is the worst of its connection slots'."""

    STARTING = "starting"
    CONNECTING = "connecting"
    SUBSCRIBING = "subscribing"
    SUBSCRIBED = "subscribed"
    #: Quiet for a good part of the stale timeout.
    STALE = "stale"
    BACKING_OFF = "backing off"
    FAILED = "failed"
    STOPPED = "stopped"
    REPLAYING = "replaying"
    #: A replay that reached the end of its recording.
    DONE = "done"


@attrs.define
class SourceMetrics:
    """Written by the source (live reader or replay)."""

    frames: int = 0  # text frames received
    connects: int = 0
    reconnects: int = 0
    state: SourceState = SourceState.STARTING
    # live only (the connection panel)
    #: The WebSocket URL, API key redacted.
    endpoint: str = ""
    #: Number of the newest connection (they count from 1 across reconnects and slots).
    connection: int = 0
    #: State of each parallel connection slot (1..N): connecting, subscribing, subscribed,
    #: stale (quiet for 2/3 of the stale timeout), backing off, failed, stopped. ``state`` is
    #: the worst of them.
    slot_states: dict[int, SourceState] = attrs.field(factory=dict)
    #: Text frames received on each connection slot (1..N).
    slot_frames: dict[int, int] = attrs.field(factory=dict)
    #: Handshakes that failed (refused, timed out, rejected).
    connect_failures: int = 0
    #: Established connections that ended, and why the last one did.
    disconnects: int = 0
    last_disconnect: str = ""
    #: Unix time (seconds) of the next connection attempt while backing off, else None.
    next_attempt_at: float | None = None
    #: ``t_ns`` of the last frame received (0: none yet).
    last_message_ns: int = 0
    #: Tickers acknowledged by the server on the open connections.
    subscribed: set[str] = attrs.field(factory=set)
    #: Per-ticker errors the server sent, by ticker.
    ticker_errors: Counter[str] = attrs.field(factory=Counter)
    #: REST calls made for backfills (live), and how many were answered 429.
    rest_calls: int = 0
    rest_rate_limited: int = 0
    # replay only
    lines_total: int = 0
    lines_read: int = 0
    corrupt_lines: int = 0


@attrs.define
class TransformMetrics:
    """Written by the transform stage."""

    bars: int = 0
    protocol_messages: int = 0
    rejects: Counter[str] = attrs.field(factory=Counter)
    ticks: int = 0
    volume_messages: int = 0
    dead_letters: int = 0
    last_event_ms: int = 0
    #: Backfills started (one per symbol per gap), minutes published from them, gap records
    #: published and the minutes they cover, REST bars rejected (``transform.backfill``).
    backfills: int = 0
    #: Backfills in flight now (their symbols' live bars wait).
    backfilling: int = 0
    backfilled_bars: int = 0
    gaps: int = 0
    gap_minutes: int = 0
    rest_rejects: int = 0


@attrs.define
class PublisherMetrics:
    """``produced`` and ``backpressure_waits`` are written by the publisher task, ``delivered``,
    ``failed``, ``queued`` and the latency histograms by its poll thread; ``backlog``,
    ``backlog_bytes``, ``spooled`` and ``spool_dir`` by the spool stage (live mode)."""

    produced: int = 0
    delivered: int = 0
    failed: int = 0
    #: Messages in the producer's local queue: not yet acknowledged by Kafka.
    queued: int = 0
    backpressure_waits: int = 0
    endpoint: str = ""
    embedded: bool = False
    #: ``connecting``, ``waiting`` (does not answer yet at start), ``up`` or ``down`` (all
    #: brokers unreachable). Written while waiting at start, then by the poll thread.
    kafka_state: str = ""
    #: Messages the spool holds for Kafka (on disk, or on their way there or back).
    backlog: int = 0
    #: Bytes of spool segments on disk not handed to the publisher yet.
    backlog_bytes: int = 0
    #: Messages that went through the spool since the start.
    spooled: int = 0
    #: Where the spool writes its segments ("" until it first does).
    spool_dir: str = ""
    #: The failed-messages file, once something was written to it ("" otherwise).
    failed_path: str = ""
    #: Produce → acknowledgement latency of each ``Outgoing`` (the time its last record was
    #: produced to the time Kafka had acknowledged as many records as were produced by then),
    #: counts per bucket of :data:`LATENCY_BUCKETS_MS` (``stats.latency_quantiles`` reads
    #: it).
    ack_latency: list[int] = attrs.field(factory=lambda: [0] * len(LATENCY_BUCKETS_MS))
    #: The same from the frame's receipt (``Outgoing.t_ns``): meaningful in live mode only,
    #: since a replay's receipt times are those of the recording.
    receipt_latency: list[int] = attrs.field(factory=lambda: [0] * len(LATENCY_BUCKETS_MS))


@attrs.define
class Metrics:
    """All counters of one run."""

    source: SourceMetrics = attrs.field(factory=SourceMetrics)
    transform: TransformMetrics = attrs.field(factory=TransformMetrics)
    publisher: PublisherMetrics = attrs.field(factory=PublisherMetrics)
    #: "live" or "replay", and what the data comes from (live: the redacted URL, replay: the
    #: recording's path). Written once by the pipeline before the run starts.
    mode: str = ""
    origin: str = ""
    #: Unix time the run started.
    started_at: float = attrs.field(factory=time.time)
    # The classes below are defined after this one, hence the lambdas.
    tickers: TickerBoard = attrs.field(factory=lambda: TickerBoard())
    channels: ChannelGauges = attrs.field(factory=lambda: ChannelGauges())

    def snapshot(self) -> dict[str, Any]:
        """A deep copy as plain data, safe to read from anywhere."""
        return attrs.asdict(self, recurse=True, value_serializer=_copy)


def _copy(_inst: object, _field: object, value: Any) -> Any:
    return dict(value) if isinstance(value, Counter) else value


#: Recent closes kept per ticker for the dashboard's sparkline.
PRICE_TRAIL = 30


@dataclasses.dataclass(frozen=True, slots=True)
class TickerRow:
    """One ticker's latest bar update, as the dashboard shows it.

    Immutable, and a dataclass rather than attrs on purpose: :class:`TickerBoard` replaces the
    row on every update, so ``Metrics.snapshot`` (``attrs.asdict``) can share it as it is
    instead of copying every price of every ticker several times a second.
    """

    price: float
    open: float
    #: The bar's open time (Unix seconds).
    bar_time: int
    updates: int
    ticks: int
    #: Event time of the last update (Unix seconds): receipt time live, recorded time in replay.
    updated_at: float
    #: The last :data:`PRICE_TRAIL` closes, oldest first.
    recent: tuple[float, ...]


@attrs.define
class TickerBoard:
    """Per-ticker figures. Written by the transform, one :meth:`on_bar` per bar update."""

    rows: dict[str, TickerRow] = attrs.field(factory=dict)

    def on_bar(
        self, symbol: str, bar_time: int, open: float, close: float, ticks: int, at: float
    ) -> None:
        """Record an accepted bar update: ``ticks`` price ticks made, event time ``at`` (s)."""
        row = self.rows.get(symbol)
        if row is None:
            self.rows[symbol] = TickerRow(close, open, bar_time, 1, ticks, at, (close,))
            return
        self.rows[symbol] = TickerRow(
            close,
            open,
            bar_time,
            row.updates + 1,
            row.ticks + ticks,
            at,
            (*row.recent[1 - PRICE_TRAIL :], close),
        )


class _HasStatistics(Protocol):
    def statistics(self) -> Any: ...


@attrs.define(slots=False)
class ChannelGauges:
    """How full each pipeline channel is: ``fill[name] == (used, size)``.

    The pipeline registers its channels once with :meth:`watch`; whoever takes a snapshot for
    display calls :meth:`sample` first, on the trio thread. The channels themselves are kept
    outside the attrs fields so that a snapshot never holds one.
    """

    fill: dict[str, tuple[int, float]] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self._channels: dict[str, _HasStatistics] = {}

    def watch(self, name: str, channel: _HasStatistics) -> None:
        """Sample ``channel`` (either end of a trio memory channel) under ``name`` from now on."""
        self._channels[name] = channel
        self.fill[name] = (0, channel.statistics().max_buffer_size)

    def sample(self) -> None:
        """Read every watched channel's ``statistics()``. Call on the trio thread."""
        for name, channel in self._channels.items():
            stats = channel.statistics()
            self.fill[name] = (stats.current_buffer_used, stats.max_buffer_size)


def latency_bucket(ns: int) -> int:
    """The index in :data:`LATENCY_BUCKETS_MS` of a latency of ``ns`` nanoseconds."""
    ms = ns / 1e6
    return 0 if ms <= 1 else min(math.ceil(4 * math.log2(ms)), len(LATENCY_BUCKETS_MS) - 1)
