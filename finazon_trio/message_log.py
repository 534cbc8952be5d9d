"""Kafka messages as JSON lines, losslessly: the spool's segments and the failed-messages file.

One message per line::

    {"topic": "price_ticks", "key": "AAPL", "value": "{\\"symbol\\":\\"AAPL\\",...}",
     "timestamp": 1731080000123, "headers": null, "error": "Broker: Message too large"}

``key``, ``value`` and header values are bytes: written as text when they are valid UTF-8
(this tool's keys and values always are), otherwise as ``{"base64": "..."}``. ``headers`` is a
list of ``[name, value]`` pairs, or null when the message has none. The failed-messages file adds
``error`` (why delivery failed); the spool adds ``received_ns`` (when the frame the message was
made from arrived, for the latency figures). Readers ignore fields they do not know.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from .events import Headers, Message, Outgoing

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
        "headers": None if headers is None else [[name, _text(v)] for name, v in headers],
    }
    if received_ns is not None:
        entry["received_ns"] = received_ns
    if error is not None:
        entry["error"] = error
    return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)


def decode(line: bytes) -> tuple[Message, int]:
    """The message of one line, and its ``received_ns`` (0 if absent).
    :class:`MessageLogError` if the line is not one."""
    try:
        entry = orjson.loads(line)
        raw_headers = entry["headers"]
        headers: Headers | None = (
            None if raw_headers is None else [(str(n), _bytes(v)) for n, v in raw_headers]
        )
        topic, timestamp = entry["topic"], entry["timestamp"]
        if not isinstance(topic, str) or not isinstance(timestamp, int):
            raise TypeError("topic must be text and timestamp an integer")
        message = (topic, _bytes(entry["key"]), _bytes(entry["value"]), timestamp, headers)
        return message, int(entry.get("received_ns", 0))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise MessageLogError(f"not a message line ({type(exc).__name__}: {exc})") from None


def _text(data: bytes) -> str | dict[str, str]:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


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


def batches(entries: Iterable[tuple[Message, int]], size: int) -> Iterator[Outgoing]:
    """Messages regrouped as ``Outgoing``: consecutive messages with the same ``received_ns``
    (one frame's) together, at most ``size`` in one."""
    for received_ns, group in itertools.groupby(entries, key=lambda entry: entry[1]):
        messages = [message for message, _ in group]
        for start in range(0, len(messages), size):
            yield Outgoing(received_ns, messages[start : start + size])
