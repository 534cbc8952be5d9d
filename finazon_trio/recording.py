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

The writers are the recorder stage (:mod:`finazon_trio.source.recorder`) and
:func:`write_recording`; the readers are :func:`read_header` and :func:`iter_entries`. The API key
never reaches a file: every text written goes through :func:`~finazon_trio.redaction.redact`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

import attrs
import orjson

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

_T = TypeVar("_T")
_LIFECYCLE_EVENTS: dict[object, Literal["connected", "disconnected"]] = {
    "connected": "connected",
    "disconnected": "disconnected",
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


def encode_header(header: RecordingHeader, secrets: Sequence[str] = ()) -> bytes:
    """The header line, newline included."""
    source = {
        "url": redact(header.url, secrets),
        "dataset": header.dataset,
        "tickers": list(header.tickers),
        "channel": header.channel,
        "frequency": header.frequency,
        "aggregation": header.aggregation,
    }
    line: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "created_ns": header.created_ns,
        "source": source,
    }
    if header.backfill:
        line["backfill"] = True
    return orjson.dumps(line) + b"\n"


def encode_entry(event: SourceEvent, secrets: Sequence[str] = ()) -> bytes:
    """One event's line, newline included, with the key redacted from its text."""
    entry: dict[str, Any]
    if isinstance(event, RestResult):
        entry = {"t_ns": event.t_ns, "rest": _encode_rest(event, secrets)}
    elif isinstance(event, Lifecycle):
        reason = redact(event.reason, secrets)
        entry = {"t_ns": event.t_ns, "conn": event.conn, "event": event.event, "reason": reason}
    else:
        direction = "in" if isinstance(event, Received) else "out"
        text = redact(event.text, secrets)
        entry = {"t_ns": event.t_ns, "conn": event.conn, "dir": direction, "text": text}
    return orjson.dumps(entry) + b"\n"


def _encode_rest(result: RestResult, secrets: Sequence[str]) -> dict[str, Any]:
    exchanges = [
        {
            "t_ns": x.t_ns,
            "method": "GET",
            "path": redact(x.path, secrets),
            "params": {k: redact(v, secrets) for k, v in x.params.items()},
            "status": x.status,
            "body": redact(x.body, secrets),
            "error": redact(x.error, secrets),
        }
        for x in result.exchanges
    ]
    return {
        "backfill": result.backfill,
        "symbol": result.symbol,
        "error": result.error,
        "exchanges": exchanges,
    }


def _decode_rest(t_ns: int, rest: object) -> RestResult | None:
    """A ``rest`` entry's result, or None if it is not a valid one."""
    if type(rest) is not dict:
        return None
    number, symbol, error = rest.get("backfill"), rest.get("symbol"), rest.get("error", "")
    exchanges = rest.get("exchanges")
    if type(number) is not int or type(symbol) is not str or type(error) is not str:
        return None
    if type(exchanges) is not list:
        return None
    decoded = []
    for x in exchanges:
        if type(x) is not dict:
            return None
        x_t, path, params = x.get("t_ns"), x.get("path"), x.get("params")
        status, body, x_error = x.get("status"), x.get("body", ""), x.get("error", "")
        if type(x_t) is not int or type(path) is not str or type(status) is not int:
            return None
        if type(params) is not dict or not all(type(v) is str for v in params.values()):
            return None
        if type(body) is not str or type(x_error) is not str:
            return None
        decoded.append(HttpExchange(x_t, path, params, status, body, x_error))
    return RestResult(t_ns, number, symbol, tuple(decoded), error)


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
    t_ns = obj.get("t_ns")
    if "rest" in obj and type(t_ns) is int:
        result = _decode_rest(t_ns, obj["rest"])
        return result if result is not None else Corrupt(line_no, "corrupt REST entry")
    conn = obj.get("conn")
    if type(t_ns) is not int or type(conn) is not int:
        return Corrupt(line_no, "corrupt line (t_ns or conn missing or not an integer)")
    direction = obj.get("dir")
    if direction is not None:
        text = obj.get("text")
        if type(text) is not str:
            return Corrupt(line_no, "corrupt line (frame without a text)")
        if direction == "in":
            return Received(t_ns, conn, text)
        if direction == "out":
            return Sent(t_ns, conn, text)
        return Corrupt(line_no, f"unknown frame direction {str(direction)[:20]!r}")
    event = _LIFECYCLE_EVENTS.get(obj.get("event"))
    if event is None:
        return Corrupt(line_no, "unknown entry (neither a frame, a lifecycle event nor REST)")
    reason = obj.get("reason", "")
    if type(reason) is not str:
        return Corrupt(line_no, "corrupt line (reason is not a string)")
    return Lifecycle(t_ns, conn, event, reason)


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
    source = obj.get("source")
    if type(source) is not dict:
        raise RecordingError(f'{path}: the header has no "source" object')
    tickers = source.get("tickers", [])
    if type(tickers) is not list or not all(type(t) is str for t in tickers):
        raise RecordingError(f'{path}: the header\'s "tickers" is not a list of strings')
    header = RecordingHeader(
        created_ns=_header_field(obj, "created_ns", int, 0, path),
        url=_header_field(source, "url", str, "", path),
        dataset=_header_field(source, "dataset", str, DEFAULT_DATASET, path),
        tickers=tickers,
        channel=_header_field(source, "channel", str, DEFAULT_CHANNEL, path),
        frequency=_header_field(source, "frequency", str, DEFAULT_FREQUENCY, path),
        aggregation=_header_field(source, "aggregation", str, DEFAULT_AGGREGATION, path),
        backfill=_header_field(obj, "backfill", bool, False, path),
    )
    try:
        header.subscription()
    except ValueError as exc:
        raise RecordingError(f"{path}: the header's subscription is invalid: {exc}") from exc
    return header


def _header_field(obj: dict[str, Any], key: str, kind: type[_T], default: _T, path: Path) -> _T:
    value = obj.get(key, default)
    if type(value) is not kind:
        raise RecordingError(f"{path}: the header's {key!r} is not a {kind.__name__}")
    return value
