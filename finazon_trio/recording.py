"""Recording format version 1: every frame a source saw, as JSON Lines.

Line 1 is the header; each later line is a frame or a connection lifecycle event::

    {"format": "finazon-trio/recording", "version": 1, "created_ns": ..., "source": {"url": ...,
     "dataset": ..., "tickers": [...], "channel": "bars", "frequency": "1s", "aggregation": "1m"}}
    {"t_ns": ..., "conn": 1, "dir": "in", "text": "<the WebSocket text frame as received>"}
    {"t_ns": ..., "conn": 1, "event": "disconnected", "reason": "..."}
    {"t_ns": ..., "rest": {"backfill": 1, "symbol": "AAPL", "error": "", "exchanges": [{"t_ns":
     ..., "method": "GET", "path": "...", "params": {...}, "status": 200, "body": "...",
     "error": ""}]}}

A ``rest`` entry (live backfill, :mod:`finazon_trio.source.rest`) is one backfill's REST calls;
the header then says ``"backfill": true``, and a replay hands the entries to the transform
instead of calling anything. Recordings without them (older ones) replay as they always did.

The lines are attrs records (``_HeaderLine``, ``_Frame``, ``_RestLine``, and
:class:`~finazon_trio.events.Lifecycle` as it is), written and read by :mod:`finazon_trio.codec`.
The writers are the recorder stage (:mod:`finazon_trio.source.recorder`) and
:func:`write_recording`; the readers are :func:`read_header` and :func:`iter_entries`. The API key
never reaches a file: every text written goes through :func:`~finazon_trio.redaction.redact`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import attrs
import orjson

from finazon_trio.codec import DecodeError, encode_line, structure
from finazon_trio.errors import RecordingError
from finazon_trio.events import HttpExchange, Lifecycle, Received, RestResult, Sent, SourceEvent
from finazon_trio.redaction import redact
from finazon_trio.settings import (
    DEFAULT_AGGREGATION,
    DEFAULT_CHANNEL,
    DEFAULT_DATASET,
    DEFAULT_FREQUENCY,
    Settings,
    Subscription,
)

logger = logging.getLogger(__name__)

FORMAT = "finazon-trio/recording"
VERSION = 1
#: The reader's chunk size.
READ_CHUNK = 1 << 20
#: Longer lines are reported as corrupt without being held in memory whole.
MAX_LINE_BYTES = 16 << 20

_FRAME_EVENTS: dict[str, type[Received | Sent]] = {"in": Received, "out": Sent}
#: Why an entry line is corrupt, by the first of its fields at fault in this order (``dir``'s
#: reason names the direction).
_ENTRY_FAULTS = {
    "t_ns": "corrupt line (t_ns or conn missing or not an integer)",
    "conn": "corrupt line (t_ns or conn missing or not an integer)",
    "text": "corrupt line (frame without a text)",
    "dir": "unknown frame direction {!r}",
    "event": "unknown entry (neither a frame nor a lifecycle event)",
    "reason": "corrupt line (reason is not a string)",
}


def _str_tuple(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class RecordingHeader:
    """Line 1 of a recording: when it was made and what was subscribed to, from where."""

    created_ns: int
    #: The WebSocket URL, API key redacted.
    url: str
    dataset: str = DEFAULT_DATASET
    tickers: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    channel: str = DEFAULT_CHANNEL
    frequency: str = DEFAULT_FREQUENCY
    aggregation: str = DEFAULT_AGGREGATION
    #: The run backfilled gaps: its REST answers are ``rest`` entries, and a replay uses them.
    backfill: bool = False

    def subscription(self) -> Subscription:
        """The subscription the recorded run used (raises ``ValueError`` on a bad frequency)."""
        return Subscription(
            dataset=self.dataset,
            tickers=self.tickers,
            channel=self.channel,
            frequency=self.frequency,
            aggregation=self.aggregation,
        )


def header_from_settings(settings: Settings, url: str) -> RecordingHeader:
    """The header for a live run with these settings, connected to ``url`` (key redacted)."""
    sub = settings.subscription
    return RecordingHeader(
        created_ns=time.time_ns(),
        url=redact(url, (settings.live.api_key,)),
        dataset=sub.dataset,
        tickers=sub.tickers,
        channel=sub.channel,
        frequency=sub.frequency,
        aggregation=sub.aggregation,
        backfill=settings.backfill.enabled,
    )


def replay_settings(settings: Settings, header: RecordingHeader) -> Settings:
    """``settings`` for a replay of the recording with ``header``: its subscription, no
    recording, and backfill as the recorded run had it (its answers are in the recording)."""
    return attrs.evolve(
        settings,
        subscription=header.subscription(),
        record=None,
        backfill=attrs.evolve(settings.backfill, enabled=header.backfill),
    )


@attrs.frozen(slots=True)
class _Source:
    """The header's ``source``: where the recording came from. Absent fields read as the
    defaults."""

    url: str = ""
    dataset: str = DEFAULT_DATASET
    tickers: tuple[str, ...] = ()
    channel: str = DEFAULT_CHANNEL
    frequency: str = DEFAULT_FREQUENCY
    aggregation: str = DEFAULT_AGGREGATION


@attrs.frozen(slots=True, kw_only=True)
class _HeaderLine:
    """Line 1, as written: ``format`` and ``version`` first, so that any reader can tell."""

    format: str = FORMAT
    version: int = VERSION
    created_ns: int = 0
    source: _Source
    #: True when the run backfilled (``rest`` entries follow); left out otherwise.
    backfill: bool | None = None


@attrs.frozen(slots=True)
class _Frame:
    """A frame's line (a lifecycle event's is :class:`~finazon_trio.events.Lifecycle`)."""

    t_ns: int
    conn: int
    dir: Literal["in", "out"]
    text: str


def encode_header(header: RecordingHeader, secrets: Sequence[str] = ()) -> bytes:
    """The header line, newline included."""
    source = _Source(
        redact(header.url, secrets),
        header.dataset,
        header.tickers,
        header.channel,
        header.frequency,
        header.aggregation,
    )
    backfill = True if header.backfill else None
    return encode_line(_HeaderLine(created_ns=header.created_ns, source=source, backfill=backfill))


@attrs.frozen(slots=True)
class _Exchange:
    """One REST call of a ``rest`` entry (:class:`~finazon_trio.events.HttpExchange`)."""

    t_ns: int
    method: str
    path: str
    params: dict[str, str]
    status: int
    body: str
    error: str = ""


@attrs.frozen(slots=True)
class _Rest:
    backfill: int
    symbol: str
    error: str
    exchanges: tuple[_Exchange, ...]


@attrs.frozen(slots=True)
class _RestLine:
    """A backfill's REST calls (:class:`~finazon_trio.events.RestResult`)."""

    t_ns: int
    rest: _Rest


def encode_entry(event: SourceEvent, secrets: Sequence[str] = ()) -> bytes:
    """One event's line, newline included, with the key redacted from its text."""
    if isinstance(event, RestResult):
        return encode_line(_rest_line(event, secrets))
    if isinstance(event, Lifecycle):
        reason = redact(event.reason, secrets)
        return encode_line(Lifecycle(event.t_ns, event.conn, event.event, reason))
    direction: Literal["in", "out"] = "in" if isinstance(event, Received) else "out"
    return encode_line(_Frame(event.t_ns, event.conn, direction, redact(event.text, secrets)))


def _rest_line(result: RestResult, secrets: Sequence[str]) -> _RestLine:
    exchanges = tuple(
        _Exchange(
            x.t_ns,
            "GET",
            redact(x.path, secrets),
            {k: redact(v, secrets) for k, v in x.params.items()},
            x.status,
            redact(x.body, secrets),
            redact(x.error, secrets),
        )
        for x in result.exchanges
    )
    rest = _Rest(result.backfill, result.symbol, result.error, exchanges)
    return _RestLine(result.t_ns, rest)


def _rest_result(line: _RestLine) -> RestResult:
    rest = line.rest
    exchanges = tuple(
        HttpExchange(x.t_ns, x.path, x.params, x.status, x.body, x.error) for x in rest.exchanges
    )
    return RestResult(line.t_ns, rest.backfill, rest.symbol, exchanges, rest.error)


def write_recording(
    path: Path, header: RecordingHeader, events: Iterable[SourceEvent], secrets: Sequence[str] = ()
) -> int:
    """Write a whole recording at once (blocking; for tools and tests). Returns lines written."""
    try:
        with open(path, "wb") as file:
            file.write(encode_header(header, secrets))
            lines = 1
            for event in events:
                file.write(encode_entry(event, secrets))
                lines += 1
    except OSError as exc:
        raise write_error(path, exc) from exc
    return lines


def write_error(path: Path, exc: OSError, hint: str = "") -> RecordingError:
    return RecordingError(f"cannot write the recording {path}: {exc.strerror or exc}{hint}")


@attrs.frozen
class Corrupt:
    """A recording line that is not a valid entry (``line_no`` counts the header as line 1)."""

    line_no: int
    reason: str


def read_header(path: Path) -> RecordingHeader:
    """The header of the recording at ``path``; :class:`RecordingError` if it is not one."""
    with _open_for_reading(path) as file:
        return _read_header(file, path)


def iter_entries(path: Path) -> Generator[SourceEvent | Corrupt, None, None]:
    """Every line after the header, in file order: an event, or :class:`Corrupt` if it is not
    valid (a truncated last line, a damaged or unknown one). Blocking: run it in a thread.

    The header is checked first (:class:`RecordingError`, raised on the first ``next``).
    """
    with _open_for_reading(path) as file:
        _read_header(file, path)
        line_no = 1
        tail: list[bytes] = []  # the unfinished line, in pieces
        tail_bytes = 0
        while chunk := file.read(READ_CHUNK):
            lines = chunk.split(b"\n")
            if len(lines) == 1:
                if tail_bytes <= MAX_LINE_BYTES:
                    tail.append(chunk)
                tail_bytes += len(chunk)
                continue
            if tail:
                line_no += 1
                tail.append(lines[0])
                yield _entry(b"".join(tail), line_no, tail_bytes + len(lines[0]))
                del lines[0]
            last = lines.pop()
            for line in lines:
                line_no += 1
                yield _parse_entry(line, line_no)
            tail, tail_bytes = [last], len(last)
        if tail_bytes:
            yield _entry(b"".join(tail), line_no + 1, tail_bytes, truncated=True)


def _entry(
    line: bytes, line_no: int, size: int, *, truncated: bool = False
) -> SourceEvent | Corrupt:
    if size > MAX_LINE_BYTES:
        return Corrupt(line_no, f"line longer than {MAX_LINE_BYTES:,} bytes")
    return _parse_entry(line, line_no, truncated=truncated)


def _parse_entry(line: bytes, line_no: int, *, truncated: bool = False) -> SourceEvent | Corrupt:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        if truncated:
            return Corrupt(line_no, "truncated line")
        return Corrupt(line_no, "empty line" if not line.strip() else "corrupt line (not JSON)")
    if type(obj) is not dict:
        return Corrupt(line_no, "corrupt line (not a JSON object)")
    if "rest" in obj:
        try:
            return _rest_result(structure(obj, _RestLine))
        except DecodeError:
            return Corrupt(line_no, "corrupt REST entry")
    direction = obj.get("dir")
    try:
        if direction is None:  # not a frame
            return structure(obj, Lifecycle)
        frame = structure(obj, _Frame)
    except DecodeError as exc:
        at_fault = exc.fields()
        why = next(why for field, why in _ENTRY_FAULTS.items() if field in at_fault)
        return Corrupt(line_no, why.format(str(direction)[:20]))
    return _FRAME_EVENTS[frame.dir](frame.t_ns, frame.conn, frame.text)


def _open_for_reading(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError as exc:
        raise RecordingError(f"recording {path} not found") from exc
    except OSError as exc:
        raise RecordingError(f"cannot read the recording {path}: {exc.strerror or exc}") from exc


def _read_header(file: BinaryIO, path: Path) -> RecordingHeader:
    not_one = f"{path} is not a finazon-trio recording"
    line = file.readline(MAX_LINE_BYTES)
    if not line.strip():
        raise RecordingError(f"{path} is empty (or its first line is): not a recording")
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise RecordingError(f"{not_one}: its first line is not a JSON header") from exc
    if type(obj) is not dict or obj.get("format") != FORMAT:
        raise RecordingError(f'{not_one}: its header lacks "format": "{FORMAT}"')
    version = obj.get("version")
    if type(version) is not int or version != VERSION:
        raise RecordingError(
            f"{path} is recording format version {version!r}; "
            f"this finazon-trio reads version {VERSION}"
        )
    try:
        header_line = structure(obj, _HeaderLine)
    except DecodeError as exc:
        raise _header_error(exc, path) from None
    source = header_line.source
    header = RecordingHeader(
        header_line.created_ns,
        source.url,
        source.dataset,
        source.tickers,
        source.channel,
        source.frequency,
        source.aggregation,
        bool(header_line.backfill),
    )
    try:
        header.subscription()
    except ValueError as exc:
        raise RecordingError(f"{path}: the header's subscription is invalid: {exc}") from exc
    return header


def _header_error(exc: DecodeError, path: Path) -> RecordingError:
    """What is wrong with a header (its format and version are right)."""
    faults = exc.faults
    if any(fault.path == ("source",) for fault in faults):
        return RecordingError(f'{path}: the header has no "source" object')
    if any(fault.path[:2] == ("source", "tickers") for fault in faults):
        return RecordingError(f'{path}: the header\'s "tickers" is not a list of strings')
    fault = faults[0]
    kind = getattr(fault.expected, "__name__", fault.expected)
    return RecordingError(f"{path}: the header's {fault.path[-1]!r} is not a {kind}")
