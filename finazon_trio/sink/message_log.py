"""Kafka messages as JSON lines, losslessly: the failed-messages file and the spool's segments.

The failed-messages file has one message per line::

    {"topic": "price_ticks", "key": "AAPL", "value": "{\\"symbol\\":\\"AAPL\\",...}",
     "timestamp": 1731080000123, "headers": null, "error": "Broker: Message too large"}

The spool writes one ``Outgoing`` (a frame's messages, or a few frames') per line, in columns::

    {"received_ns": 1731080000123456789, "topics": ["price_ticks", ...], "keys": ["AAPL", ...],
     "values": [...], "timestamps": [1731080000023, ...], "headers": null}

(A message costs 14 us to write and read back as a line of its own, 2.6 us in columns: the spool
must stay cheaper than the pipeline it stands in for, or a backlog never drains.)

``key``, ``value`` and header values are bytes: written as text when they are valid UTF-8
(this tool's keys and values always are), otherwise as ``{"base64": "..."}``. ``headers`` is a
list of ``[name, value]`` pairs, or null when the message has none; in columns, null when no
message has any. ``error`` says why delivery failed; ``received_ns`` is when the frame the
messages were made from arrived (for the latency figures; 0 when absent). Readers take either
kind of line and ignore fields they do not know.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from finazon_trio.events import Headers, Message, Outgoing

#: Bytes read per call when reading a file back.
READ_CHUNK = 1 << 20


class MessageLogError(ValueError):
    """A line that is not a message of this format."""


def encode(message: Message, *, received_ns: int | None = None, error: str | None = None) -> bytes:
    """One message as a line, newline included."""
    topic, key, value, timestamp, headers = message
    entry: dict[str, Any] = {
        "topic": topic,
        "key": _text(key),
        "value": _text(value),
        "timestamp": timestamp,
        "headers": _header_texts(headers),
    }
    if received_ns is not None:
        entry["received_ns"] = received_ns
    if error is not None:
        entry["error"] = error
    return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)


_EMPTY: list[tuple[()]] = [(), (), (), (), ()]


def encode_batch(outgoing: Outgoing) -> bytes:
    """The messages of ``outgoing`` as one line in columns, newline included."""
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
        received_ns = int(entry.get("received_ns", 0))
        if "values" in entry:
            return Outgoing(received_ns, _columns(entry))
        topic, timestamp = entry["topic"], entry["timestamp"]
        if not isinstance(topic, str) or not isinstance(timestamp, int):
            raise TypeError("topic must be text and timestamp an integer")
        headers = _headers(entry["headers"])
        return Outgoing(
            received_ns, [(topic, _bytes(entry["key"]), _bytes(entry["value"]), timestamp, headers)]
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise MessageLogError(f"not a message line ({type(exc).__name__}: {exc})") from None


def _columns(entry: dict[str, Any]) -> list[Message]:
    topics, timestamps = entry["topics"], entry["timestamps"]
    keys, values = _bytes_list(entry["keys"]), _bytes_list(entry["values"])
    headers = entry["headers"]
    headers = [None] * len(topics) if headers is None else [_headers(h) for h in headers]
    if not all(type(t) is str for t in topics) or not all(type(t) is int for t in timestamps):
        raise TypeError("topics must be text and timestamps integers")
    return list(zip(topics, keys, values, timestamps, headers, strict=True))


def _text(data: bytes) -> str | dict[str, str]:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _texts(items: Sequence[bytes]) -> list[str] | list[str | dict[str, str]]:
    try:
        return [data.decode() for data in items]
    except UnicodeDecodeError:
        return [_text(data) for data in items]


def _header_texts(headers: Headers | None) -> list[list[Any]] | None:
    return None if headers is None else [[name, _text(v)] for name, v in headers]


def _headers(raw: Any) -> Headers | None:
    return None if raw is None else [(str(name), _bytes(v)) for name, v in raw]


def _bytes_list(fields: list[Any]) -> list[bytes]:
    try:
        return [text.encode() for text in fields]
    except AttributeError:  # not all text: base64 (or wrong)
        return [_bytes(field) for field in fields]


def _bytes(field: object) -> bytes:
    if isinstance(field, str):
        return field.encode()
    if isinstance(field, dict) and isinstance(encoded := field.get("base64"), str):
        return base64.b64decode(encoded, validate=True)
    raise TypeError(f"expected text or {{'base64': ...}}, not {field!r}")


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
