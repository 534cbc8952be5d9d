"""The transform stage: frames in, Kafka records of the output contract out.

Each bar frame becomes ``N`` price ticks and one volume-stream record (see the README, "The
output contract"); anything else is a protocol message (counted) or a reject (counted, logged
at a limited rate, optionally sent to the dead-letter topic). This is the hot path: every frame
of a run goes through :meth:`Transformer.on_frame`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from finazon_trio.events import (
    BackfillRequest,
    Lifecycle,
    Message,
    Outgoing,
    Received,
    RestResult,
    Sent,
    SourceEvent,
)
from finazon_trio.observe.metrics import TickerBoard, TransformMetrics
from finazon_trio.observe.ratelog import RateLimitedLog
from finazon_trio.settings import Output, Subscription
from finazon_trio.transform.backfill import Backfiller
from finazon_trio.transform.expand import BACKFILL_ORIGIN, expand, origin_headers
from finazon_trio.transform.frames import Bar, Protocol, Reject, parse_frame
from finazon_trio.transform.record import encode as encode_record
from finazon_trio.transform.state import BarStates, BarUpdate

logger = logging.getLogger(__name__)

#: Rejects of one reason logged in full before rate limiting starts.
LOG_FIRST_REJECTS = 5
#: Then at most one log line per reason per this many seconds.
LOG_REJECT_INTERVAL = 10.0
#: Frames are shortened to this many characters in the log.
LOG_FRAME_CHARS = 200
#: Events taken from the source channel at once when they queue up. One ``Outgoing`` and one
#: trip through each channel per batch instead of per frame: 115 -> 25 us per frame of trio
#: overhead in a replay, a fifth of its CPU time.
BATCH_EVENTS = 16


class Transformer:
    """Turns text frames into Kafka records; holds the per-symbol bar state. Not thread-safe."""

    def __init__(
        self,
        output: Output,
        subscription: Subscription,
        metrics: TransformMetrics,
        *,
        tickers: TickerBoard | None = None,
        clock: Callable[[], float] = time.monotonic,
        backfill: Callable[[BackfillRequest], None] | None = None,
    ) -> None:
        """``tickers`` (the dashboard's per-ticker board) gets every accepted bar update;
        ``clock`` (seconds) paces the reject log; with ``backfill`` (which asks the REST
        client, or nothing in a replay), gaps after a disconnect are backfilled or reported
        (:mod:`.backfill`)."""
        self._output = output
        self._subscription = subscription
        self._metrics = metrics
        self._tickers = tickers
        self._points = output.points
        self._interval_ms = subscription.frequency_ms
        self._states = BarStates()
        self._reject_log = RateLimitedLog(
            logger, LOG_REJECT_INTERVAL, first=LOG_FIRST_REJECTS, clock=clock
        )
        self._backfill: Backfiller | None = None
        if backfill is not None:
            self._backfill = Backfiller(
                self._states,
                metrics,
                submit=backfill,
                gaps_topic=output.gaps_topic,
                dataset=subscription.dataset,
            )

    def on_frame(self, t_ns: int, text: str, conn: int = 0) -> list[Message]:
        """The records for one frame received at ``t_ns`` (ns since the epoch) on connection
        ``conn``, in order (with a backfill in flight for a symbol, its bars come later)."""
        e = t_ns // 1_000_000
        self._metrics.last_event_ms = e
        messages: list[Message] = []
        for item in parse_frame(text):
            if isinstance(item, Bar):
                self._on_bar(e, item, conn, messages)
            elif isinstance(item, Protocol):
                self._metrics.protocol_messages += 1
            else:
                self._on_reject(e, item, messages)
        return messages

    def on_event(self, event: Lifecycle | RestResult) -> list[Message]:
        """The records a lifecycle event or a backfill's REST answer brings (backfill only)."""
        messages: list[Message] = []
        if self._backfill is None:
            return messages
        if isinstance(event, RestResult):
            self._backfill.result(event, messages, self._on_backfilled, self._on_bar)
        elif event.event == "disconnected":
            self._backfill.disconnected(event.conn)
        return messages

    def finish(self) -> list[Message]:
        """The input ended: what backfills still in flight leave (gaps, then held bars)."""
        messages: list[Message] = []
        if self._backfill is not None:
            self._backfill.finish(self._metrics.last_event_ms, messages, self._on_bar)
        return messages

    def _on_backfilled(self, e: int, bar: Bar, messages: list[Message]) -> None:
        update = self._states.advance(bar)
        if isinstance(update, Reject):  # cannot happen: backfilled minutes are never older
            self._on_reject(e, update, messages)
            return
        self._emit(e, update, messages, BACKFILL_ORIGIN)

    def _on_bar(self, e: int, bar: Bar, conn: int, messages: list[Message]) -> None:
        if self._backfill is not None and self._backfill.take(e, bar, conn, messages, self._on_bar):
            return
        update = self._states.advance(bar)
        if isinstance(update, Reject):
            self._on_reject(e, update, messages)
            return
        self._emit(e, update, messages)

    def _emit(
        self, e: int, update: BarUpdate, messages: list[Message], origin: str | None = None
    ) -> None:
        """The records of an accepted update: its ticks and volume record, or in the ingest
        role its frames record (README, "Scaling out"); ``origin`` marks backfilled ones."""
        metrics = self._metrics
        metrics.bars += 1
        bar = update.bar
        frames_topic = self._output.frames_topic
        if frames_topic is not None:
            record = encode_record(update, e, self._interval_ms, self._subscription, origin)
            messages.append((frames_topic, bar.symbol.encode(), record, e, None))
            n = 0
        else:
            headers = origin_headers(origin)
            out = expand(update, e, self._interval_ms, self._output, self._subscription, headers)
            messages += out
            n = self._points
            metrics.ticks += n
            metrics.volume_messages += 1
        if self._tickers is not None:
            self._tickers.on_bar(bar.symbol, bar.bar_time, bar.open, bar.close, n, e / 1000)

    def _on_reject(self, e: int, reject: Reject, messages: list[Message]) -> None:
        self._metrics.rejects[reject.reason] += 1
        text = reject.text
        if len(text) > LOG_FRAME_CHARS:
            text = f"{text[:LOG_FRAME_CHARS]}… ({len(reject.text)} characters)"
        self._reject_log(
            "rejected frame (%s): %s; frame %r",
            reject.reason,
            reject.detail,
            text,
            key=reject.reason,
        )
        topic = self._output.dead_letter_topic
        if topic is None:
            return
        key = reject.symbol.encode() if reject.symbol is not None else b""
        # Text from a WebSocket is valid UTF-8; only a lone surrogate from a caller is replaced.
        value = reject.text.encode(errors="replace")
        headers = [("reason", reject.reason.encode()), ("detail", reject.detail.encode())]
        messages.append((topic, key, value, e, headers))
        self._metrics.dead_letters += 1


async def run_transform(
    receive: trio.MemoryReceiveChannel[SourceEvent],
    send: trio.MemorySendChannel[Outgoing],
    transformer: Transformer,
) -> None:
    """The transform stage: ``Received`` frames in, their records out, until ``receive`` ends.

    The frames already waiting when one arrives (up to :data:`BATCH_EVENTS` events) go out as
    one ``Outgoing``, stamped with the first frame's receipt time; when the transform keeps up,
    that is one frame each. Sent frames and lifecycle events are ignored (the recorder keeps
    them), but for backfill: lifecycle events and REST answers go to
    :meth:`Transformer.on_event`, and what is still held when ``receive`` ends to
    :meth:`Transformer.finish`. Closes ``send`` on exit so the publisher drains and stops.
    Cancellation stops it between batches.
    """
    async with send, receive:
        async for event in receive:
            events = _with_ready(event, receive)
            messages: list[Message] = []
            for item in events:
                if isinstance(item, Received):
                    messages += transformer.on_frame(item.t_ns, item.text, item.conn)
                elif not isinstance(item, Sent):
                    messages += transformer.on_event(item)
            if messages:
                await send.send(Outgoing(events[0].t_ns, messages))
        messages = transformer.finish()
        if messages:
            await send.send(Outgoing(time.time_ns(), messages))


def _with_ready(
    first: SourceEvent, receive: trio.MemoryReceiveChannel[SourceEvent]
) -> list[SourceEvent]:
    """``first`` and the events already waiting behind it, up to :data:`BATCH_EVENTS` in all."""
    events = [first]
    try:
        while len(events) < BATCH_EVENTS:
            events.append(receive.receive_nowait())
    except (trio.WouldBlock, trio.EndOfChannel):
        pass
    return events
