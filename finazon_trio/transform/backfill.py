"""Gaps and backfill: the minutes a disconnect missed, filled from REST or reported.

Design. Everything that decides lives in the transform task, beside :class:`~.state.BarStates`,
and depends only on the order of the events it receives, so a replay decides exactly as the live
run did:

1. **Detect.** A ``disconnected`` lifecycle event marks the symbols last seen on that
   connection. A marked symbol's next bar that opens a newer minute than its current bar starts a
   backfill of the minutes from its current bar (whose final state was missed) to the minute
   before the new bar: whole closed minutes only, never the open one. A bar of the same minute
   just clears the mark (the next update carries the bar so far).
2. **Hold.** From that bar on, the symbol's bars are held in a per-symbol queue (bounded:
   :data:`MAX_HELD`), other symbols go on. The transform asks the REST client
   (:mod:`finazon_trio.source.rest`, live only) through ``submit``.
3. **Judge.** The REST client answers with a :class:`~finazon_trio.events.RestResult` (every
   HTTP exchange, or why it stopped: ``--backfill-timeout``, the call budget, 429s) that enters
   the pipeline *before* the recorder, so it is recorded and comes back in a replay at the same
   place. :func:`judge` turns it into bars (validated, in range, one per minute) and a reason
   for what is still missing.
4. **Publish, then release.** Each minute goes through the same ``BarStates`` and
   :func:`~.expand.expand` as live bars, with event time ``bar_time + 60 s``, interval 60 s and
   the header ``origin: backfill``: the minute that was in progress continues its bar (ticks
   from the last close seen, ``volume_delta`` against the last volume seen), later minutes are
   new bars. What is still missing becomes :class:`GapRecord` s on the gaps topic. Then the held
   bars go through in order, so no bar is ever published after a newer one of its symbol.

A result that never comes (the run stops first) ends as an ``interrupted`` gap when the input
ends; a queue past :data:`MAX_HELD` as an ``overflow`` gap. The pure parts (:func:`missing`,
:func:`ask_range`, :func:`rest_bars`, :func:`judge`, :func:`gap_ranges`) are plain functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import orjson

from finazon_trio.codec import decode, encode
from finazon_trio.events import BackfillRequest, Message, RestResult
from finazon_trio.observe.metrics import TransformMetrics
from finazon_trio.transform.frames import Bar, Reject, parse_bar
from finazon_trio.transform.state import BarStates

#: Seconds per bar: backfill works on 1-minute bars (``--aggregation 1m``).
BAR_SECONDS = 60
#: Finazon's 1-minute history reaches this many bars back; older minutes are gaps at once.
MAX_HISTORY_BARS = 1000
#: Bars of one symbol held while its backfill is in flight; past it, the backfill gives up.
MAX_HELD = 1000
#: The frequency given to backfilled bars: one update per minute.
BACKFILL_FREQUENCY = "1m"

# Gap reasons (the gap record's ``reason``).
UNAUTHORIZED = "unauthorized"  # 401/403: the key or the plan refused
RATE_LIMITED = "rate_limited"  # the call budget or 429s outlasted --backfill-timeout
UNAVAILABLE = "unavailable"  # 5xx
BAD_REQUEST = "bad_request"  # any other 4xx (400 INVALID_TICKER...)
TIMEOUT = "timeout"  # --backfill-timeout passed during a call
NETWORK = "network"  # no HTTP answer at all
INVALID_RESPONSE = "invalid_response"  # a 200 whose body or bars were not valid
NOT_SERVED = "not_served"  # a valid answer without that minute
BEYOND_HISTORY = "beyond_history"  # older than MAX_HISTORY_BARS minutes
INTERRUPTED = "interrupted"  # the run ended before the answer
OVERFLOW = "overflow"  # more than MAX_HELD bars waited
GAP_REASONS = (
    UNAUTHORIZED,
    RATE_LIMITED,
    UNAVAILABLE,
    BAD_REQUEST,
    TIMEOUT,
    NETWORK,
    INVALID_RESPONSE,
    NOT_SERVED,
    BEYOND_HISTORY,
    INTERRUPTED,
    OVERFLOW,
)


@attrs.frozen
class GapRecord:
    """What could not be filled: ``symbol``'s bars opening from ``first_missing`` to
    ``last_missing`` (Unix seconds), and why; ``detected_at`` in epoch ms."""

    symbol: str
    first_missing: int
    last_missing: int
    reason: str
    dataset: str
    detected_at: int


def encode_gap(gap: GapRecord) -> bytes:
    """The gap record's Kafka value (JSON, the fields in order)."""
    return encode(gap)


def missing(current: int, new: int) -> tuple[int, int] | None:
    """The bars missed between a symbol's current bar (opening at ``current``) and a newer one
    (opening at ``new``): the current one's final state, and every minute in between."""
    if new <= current:
        return None
    return current, new - BAR_SECONDS


def ask_range(first: int, last: int) -> tuple[int, int] | None:
    """What to ask REST for: the newest :data:`MAX_HISTORY_BARS` minutes of the range."""
    oldest = last - (MAX_HISTORY_BARS - 1) * BAR_SECONDS
    return (max(first, oldest), last) if last >= first else None


def rest_bars(body: str, symbol: str, first: int, last: int) -> tuple[dict[int, Bar], int]:
    """The valid bars of one REST answer within ``[first, last]``, by bar time, and how many
    elements were rejected (the whole body counts as one when it is not ``{"data": [...]}``).

    Each element must be a valid bar (the WebSocket's rules, :func:`~.frames.parse_bar`) on a
    minute within the range; a second bar for a minute is rejected; order does not matter.
    """
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}, 1
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        return {}, 1
    bars: dict[int, Bar] = {}
    rejects = 0
    for element in data:
        bar = _rest_bar(element, symbol)
        if bar is None or not _wanted(bar.bar_time, first, last) or bar.bar_time in bars:
            rejects += 1
        else:
            bars[bar.bar_time] = bar
    return bars, rejects


def _wanted(bar_time: int, first: int, last: int) -> bool:
    return first <= bar_time <= last and bar_time % BAR_SECONDS == 0


def _rest_bar(element: Any, symbol: str) -> Bar | None:
    if not isinstance(element, dict):
        return None
    obj = {**element, "s": symbol, "f": BACKFILL_FREQUENCY}
    bar = parse_bar(obj, orjson.dumps(obj))
    return None if isinstance(bar, Reject) else bar


@attrs.frozen
class Judged:
    """What a backfill's REST calls gave: bars by bar time, rejects, and the reason the rest
    of the range is missing (None when nothing is)."""

    bars: dict[int, Bar]
    rejects: int
    reason: str | None


def judge(result: RestResult, first: int, last: int) -> Judged:
    """Judge the exchanges of one backfill asked for ``[first, last]`` (pure)."""
    bars: dict[int, Bar] = {}
    rejects = 0
    reason: str | None = None
    for exchange in result.exchanges:
        if exchange.status == 200:
            got, bad = rest_bars(exchange.body, result.symbol, first, last)
            rejects += bad
            for bar_time, bar in got.items():
                if bar_time in bars:
                    rejects += 1
                else:
                    bars[bar_time] = bar
            reason = None
        else:
            reason = status_reason(exchange.status, exchange.error)
    if result.error:
        reason = result.error if result.error in GAP_REASONS else TIMEOUT
    if len(bars) == (last - first) // BAR_SECONDS + 1:
        return Judged(bars, rejects, None)
    if reason is None:
        reason = INVALID_RESPONSE if rejects else NOT_SERVED
    return Judged(bars, rejects, reason)


def status_reason(status: int, error: str = "") -> str:
    """The gap reason of an HTTP status other than 200 (0: no answer, ``error`` says why)."""
    if status == 0:
        return TIMEOUT if error == TIMEOUT else NETWORK
    if status in (401, 403):
        return UNAUTHORIZED
    if status == 429:
        return RATE_LIMITED
    if status >= 500:
        return UNAVAILABLE
    if 400 <= status < 500:
        return BAD_REQUEST
    return INVALID_RESPONSE


def gap_ranges(first: int, last: int, present: set[int]) -> list[tuple[int, int]]:
    """The runs of minutes from ``first`` to ``last`` that are not in ``present``."""
    ranges: list[tuple[int, int]] = []
    start: int | None = None
    for bar_time in range(first, last + BAR_SECONDS, BAR_SECONDS):
        if bar_time in present:
            if start is not None:
                ranges.append((start, bar_time - BAR_SECONDS))
                start = None
        elif start is None:
            start = bar_time
    if start is not None:
        ranges.append((start, last))
    return ranges


#: A held bar (event time, bar, connection), or the number of a connection that ended.
_Held = tuple[int, Bar, int] | int
#: Processes one bar as the transform does: ``(e, bar, conn, messages)``.
Feed = Callable[[int, Bar, int, list[Message]], None]
#: Publishes one backfilled bar: ``(e, bar, messages)``.
Publish = Callable[[int, Bar, list[Message]], None]


@attrs.define
class _Backfill:
    number: int
    first: int
    last: int
    held: list[_Held]


class Backfiller:
    """The transform's gap detection, holding and release (see the module docstring). One
    task owns it, as it owns the ``BarStates`` it reads."""

    def __init__(
        self,
        states: BarStates,
        metrics: TransformMetrics,
        *,
        submit: Callable[[BackfillRequest], None],
        gaps_topic: str,
        dataset: str,
    ) -> None:
        self._states = states
        self._metrics = metrics
        self._submit = submit
        self._gaps_topic = gaps_topic
        self._dataset = dataset
        self._conn: dict[str, int] = {}
        self._marked: set[str] = set()
        self._busy: dict[str, _Backfill] = {}
        self._numbers = 0

    def disconnected(self, conn: int) -> None:
        """Connection ``conn`` ended: its symbols' next newer bar starts a backfill."""
        for symbol, last in self._conn.items():
            if last != conn:
                continue
            busy = self._busy.get(symbol)
            if busy is None:
                self._marked.add(symbol)
            else:
                busy.held.append(conn)

    def take(self, e: int, bar: Bar, conn: int, messages: list[Message], feed: Feed) -> bool:
        """Whether ``bar`` is held (its symbol is, or starts, backfilling) rather than
        processed now."""
        symbol = bar.symbol
        self._conn[symbol] = conn
        busy = self._busy.get(symbol)
        if busy is not None:
            busy.held.append((e, bar, conn))
            if len(busy.held) > MAX_HELD:
                asked = ask_range(busy.first, busy.last)
                assert asked is not None
                self._gaps(e, symbol, *asked, OVERFLOW, messages)
                self._release(symbol, messages, feed)
            return True
        if symbol not in self._marked:
            return False
        self._marked.discard(symbol)
        current = self._states.bar_time(symbol)
        span = None if current is None else missing(current, bar.bar_time)
        if span is None:
            return False
        first, last = span
        self._numbers += 1
        self._metrics.backfills += 1
        self._metrics.backfilling += 1
        self._busy[symbol] = _Backfill(self._numbers, first, last, [(e, bar, conn)])
        asked = ask_range(first, last)
        assert asked is not None
        if asked[0] > first:
            self._gaps(e, symbol, first, asked[0] - BAR_SECONDS, BEYOND_HISTORY, messages)
        self._submit(BackfillRequest(self._numbers, symbol, *asked))
        return True

    def result(
        self, result: RestResult, messages: list[Message], publish: Publish, feed: Feed
    ) -> None:
        """A backfill's answer: publish its minutes, report what is missing, release."""
        busy = self._busy.get(result.symbol)
        if busy is None or busy.number != result.backfill:
            return  # given up already (overflow), or not ours
        e = result.t_ns // 1_000_000
        asked = ask_range(busy.first, busy.last)
        assert asked is not None
        judged = judge(result, *asked)
        self._metrics.rest_rejects += judged.rejects
        for bar_time in sorted(judged.bars):
            publish(bar_time * 1000 + BAR_SECONDS * 1000, judged.bars[bar_time], messages)
            self._metrics.backfilled_bars += 1
        if judged.reason is not None:
            for first, last in gap_ranges(*asked, set(judged.bars)):
                self._gaps(e, result.symbol, first, last, judged.reason, messages)
        self._release(result.symbol, messages, feed)

    def finish(self, e: int, messages: list[Message], feed: Feed) -> None:
        """The input ended: backfills still in flight become ``interrupted`` gaps (the part
        not already reported) and their held bars go through."""
        for symbol in list(self._busy):
            busy = self._busy[symbol]
            asked = ask_range(busy.first, busy.last)
            assert asked is not None
            self._gaps(e, symbol, *asked, INTERRUPTED, messages)
            self._release(symbol, messages, feed)

    def _release(self, symbol: str, messages: list[Message], feed: Feed) -> None:
        busy = self._busy.pop(symbol)
        self._metrics.backfilling -= 1
        conn = None
        for item in busy.held:
            again = self._busy.get(symbol)  # a released bar may start the next backfill
            if again is not None:
                again.held.append(item)
            elif isinstance(item, int):
                if conn == item:
                    self._marked.add(symbol)
            else:
                conn = item[2]
                feed(*item, messages)

    def _gaps(
        self, e: int, symbol: str, first: int, last: int, reason: str, messages: list[Message]
    ) -> None:
        gap = GapRecord(symbol, first, last, reason, self._dataset, e)
        messages.append((self._gaps_topic, symbol.encode(), encode_gap(gap), e, None))
        self._metrics.gaps += 1
        self._metrics.gap_minutes += (last - first) // BAR_SECONDS + 1


def decode_gap(data: bytes) -> GapRecord:
    """A gap record from its Kafka value (:class:`~finazon_trio.codec.DecodeError` if not)."""
    return decode(data, GapRecord)
