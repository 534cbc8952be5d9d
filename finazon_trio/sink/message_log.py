"""Kafka messages as JSON lines, losslessly: the failed-messages file and the spool's segments.

The failed-messages file has one message per line::

    {"topic": "price_ticks", "key": "AAPL", "value": "{\\"symbol\\":\\"AAPL\\",...}",
     "timestamp": 1731080000123, "headers": null, "error": "Broker: Message too large"}

The spool writes one ``Outgoing`` (a frame's messages, or a few frames') per line, in columns::

    {"received_ns": 1731080000123456789, "topics": ["price_ticks", ...], "keys": ["AAPL", ...],
     "values": [...], "timestamps": [1731080000023, ...], "headers": null}

(A message costs 14 us to write and read back as a line of its own, 2.6 us in columns: the spool
must stay cheaper than the pipeline it stands in for, or a backlog never drains.)

A line of one message is an attrs record (``_MessageLine``) written and read by
:mod:`finazon_trio.codec`; the columns are encoded by hand, for the reason given at
:func:`encode_batch`. Both follow the codec's conventions.

``key``, ``value`` and header values are bytes: written as text when they are valid UTF-8
(this tool's keys and values always are), otherwise as ``{"base64": "..."}``. ``headers`` is a
list of ``[name, value]`` pairs, or null when the message has none; in columns, null when no
message has any. ``error`` says why delivery failed; ``received_ns`` is when the frame the
messages were made from arrived (for the latency figures; 0 when absent). Readers take either
kind of line and ignore fields they do not know.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson

from finazon_trio.codec import DecodeError, bytes_as_json, bytes_from_json, encode_line, structure
from finazon_trio.events import Headers, Message, Outgoing

#: Bytes read per call when reading a file back.
READ_CHUNK = 1 << 20


class MessageLogError(ValueError):
    """A line that is not a message of this format."""


@attrs.frozen(slots=True)
class _MessageLine:
    """A line of one message: the failed-messages file's (and spools' of earlier versions)."""

    topic: str
    key: bytes
    value: bytes
    timestamp: int
    headers: Headers | None
    #: Left out when None, as ``error`` is.
    received_ns: int | None = None
    error: str | None = None


def encode(message: Message, *, received_ns: int | None = None, error: str | None = None) -> bytes:
    """One message as a line, newline included."""
    return encode_line(_MessageLine(*message, received_ns=received_ns, error=error))


_EMPTY: list[tuple[()]] = [(), (), (), (), ()]


def encode_batch(outgoing: Outgoing) -> bytes:
    """The messages of ``outgoing`` as one line in columns, newline included.

    Encoded (and read back by :func:`decode`) by hand, not as a record through the codec: a
    list comprehension per column instead of a converter hook per value. Over 100,100 messages,
    91 a line (``python -m benchmarks.codec_costs``), an attrs record through the codec costs
    0.48 us a message against 0.37 here to write and 0.82 against 0.61 to read back: a third
    more for the spool's round trip, which must stay cheaper than the pipeline.
    """
    topics, keys, values, timestamps, headers = list(zip(*outgoing.messages, strict=True)) or _EMPTY
    entry = {
        "received_ns": outgoing.t_ns,
        "topics": topics,
        "keys": _texts(keys),
        "values": _texts(values),
        "timestamps": timestamps,
        "headers": (
            None if headers.count(None) == len(headers) else [_header_texts(h) for h in headers]
        ),
    }
    return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)


def decode(line: bytes) -> Outgoing:
    """The messages of one line, of either kind, stamped with its ``received_ns`` (0 if
    absent). :class:`MessageLogError` if the line is neither."""
    try:
        entry = orjson.loads(line)
        if type(entry) is dict and "values" in entry:
            return Outgoing(int(entry.get("received_ns", 0)), _columns(entry))
        one = structure(entry, _MessageLine)
    except DecodeError as exc:
        raise MessageLogError(f"not a message line ({exc})") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise MessageLogError(f"not a message line ({type(exc).__name__}: {exc})") from None
    message = (one.topic, one.key, one.value, one.timestamp, one.headers)
    return Outgoing(one.received_ns or 0, [message])


def _columns(entry: dict[str, Any]) -> list[Message]:
    topics, timestamps = entry["topics"], entry["timestamps"]
    keys, values = _bytes_list(entry["keys"]), _bytes_list(entry["values"])
    headers = entry["headers"]
    headers = [None] * len(topics) if headers is None else [_headers(h) for h in headers]
    if not all(type(t) is str for t in topics) or not all(type(t) is int for t in timestamps):
        raise TypeError("topics must be text and timestamps integers")
    return list(zip(topics, keys, values, timestamps, headers, strict=True))


def _texts(items: Sequence[bytes]) -> list[str] | list[str | dict[str, str]]:
    try:
        return [data.decode() for data in items]
    except UnicodeDecodeError:
        return [bytes_as_json(data) for data in items]


def _header_texts(headers: Headers | None) -> list[list[Any]] | None:
    return None if headers is None else [[name, bytes_as_json(v)] for name, v in headers]


def _headers(raw: Any) -> Headers | None:
    return None if raw is None else [(str(name), bytes_from_json(v)) for name, v in raw]


def _bytes_list(fields: list[Any]) -> list[bytes]:
    try:
        return [text.encode() for text in fields]
    except AttributeError:  # not all text: base64 (or wrong)
        return [bytes_from_json(field) for field in fields]


def read_lines(path: Path, offset: int, end: int) -> tuple[list[bytes], int]:
    """The complete lines of ``path`` from byte ``offset``, reading at most about
    :data:`READ_CHUNK` bytes and never past ``end``; and the offset after the last one."""
    with open(path, "rb") as file:
        file.seek(offset)
        data = file.read(min(READ_CHUNK, end - offset))
        if not data.endswith(b"\n") and offset + len(data) < end:
            data += file.readline()  # a line longer than a chunk
    cut = data.rfind(b"\n") + 1
    return data[:cut].splitlines(), offset + cut


def iter_file(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` for every complete or final line of a file, from 1."""
    with open(path, "rb") as file:
        for number, line in enumerate(file, 1):
            if line.strip():
                yield number, line


def batches(lines: Iterable[Outgoing], size: int) -> Iterator[Outgoing]:
    """The lines' messages regrouped: consecutive lines with the same ``received_ns`` (one
    frame's messages, one per line) together, in ``Outgoing`` of at most ``size`` messages."""
    for received_ns, group in itertools.groupby(lines, key=lambda outgoing: outgoing.t_ns):
        messages = [message for outgoing in group for message in outgoing.messages]
        for start in range(0, len(messages), size):
            yield Outgoing(received_ns, messages[start : start + size])
