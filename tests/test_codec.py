"""The codec: its conventions, and the formats written through it, byte for byte as before.

The expected lines below were written by the hand-built encoders the codec replaced (recording
lines, failed-message lines, client events, server replies): files and peers made before it
must read the same, and what is written now must not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from finazon_trio.codec import (
    DecodeError,
    bytes_as_json,
    bytes_from_json,
    decode,
    encode,
    encode_line,
    structure,
)
from finazon_trio.events import Lifecycle, Message, Outgoing, Received, Sent, SourceEvent
from finazon_trio.recording import (
    Corrupt,
    RecordingHeader,
    encode_entry,
    encode_header,
    iter_entries,
    read_header,
    write_recording,
)
from finazon_trio.settings import Subscription
from finazon_trio.sink import message_log
from finazon_trio.source import protocol

from .helpers.paths import SAMPLE
from .helpers.recording import KEY

T0_MS = 1_731_080_000_000


@attrs.frozen(slots=True)
class Inner:
    name: str
    value: bytes


@attrs.frozen(slots=True)
class Record:
    kind: Literal["a", "b"]
    count: int
    ratio: float
    flag: bool
    items: tuple[Inner, ...]
    pairs: list[tuple[str, bytes]] | None
    missing_means_zero: int = 0
    note: str | None = None


RECORD = Record("a", 3, 0.5, True, (Inner("x", b"\xff\x00"),), [("h", b"ok")], note="n")


def test_records_round_trip_in_field_order() -> None:
    data = encode(RECORD)
    assert data == (
        b'{"kind":"a","count":3,"ratio":0.5,"flag":true,'
        b'"items":[{"name":"x","value":{"base64":"/wA="}}],"pairs":[["h","ok"]],'
        b'"missing_means_zero":0,"note":"n"}'
    )
    assert decode(data, Record) == RECORD
    assert encode_line(RECORD) == data + b"\n"


def test_a_none_default_is_left_out_and_other_fields_are_not() -> None:
    record = attrs.evolve(RECORD, note=None, pairs=None)
    entry = orjson.loads(encode(record))
    assert "note" not in entry
    assert entry["pairs"] is None  # no default: written, null
    assert decode(encode(record), Record) == record


@attrs.frozen(slots=True)
class Misordered:
    first: int
    optional: int | None = None
    last: int = 0


def test_a_field_that_may_be_left_out_comes_after_the_others() -> None:
    assert encode(Misordered(1, 2, 3)) == b'{"first":1,"last":3,"optional":2}'


def test_absent_fields_with_defaults_read_as_the_default_and_unknown_keys_are_ignored() -> None:
    entry = orjson.loads(encode(RECORD))
    del entry["note"], entry["missing_means_zero"]
    entry["from_a_newer_version"] = [1, 2]
    assert structure(entry, Record) == attrs.evolve(RECORD, note=None)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"count": "3"}, ("count",)),  # a string is not a number
        ({"count": 3.0}, ("count",)),
        ({"count": True}, ("count",)),  # nor a boolean
        ({"ratio": "0.5"}, ("ratio",)),
        ({"flag": 1}, ("flag",)),
        ({"kind": "c"}, ("kind",)),
        ({"note": 5}, ("note",)),  # a number is not a string
        ({"items": {"name": "x"}}, ("items",)),  # only an array is a sequence
        ({"items": "xy"}, ("items",)),
        ({"items": [{"name": "x", "value": 5}]}, ("items", 0, "value")),
        ({"items": [{"name": "x", "value": {"base64": "!!"}}]}, ("items", 0, "value")),
        ({"items": [["x", "y"]]}, ("items", 0)),
        ({"pairs": [["h"]]}, ("pairs", 0)),
        ({"pairs": "hh"}, ("pairs",)),
    ],
)
def test_reading_is_strict_and_names_the_field(
    change: dict[str, object], path: tuple[str | int, ...]
) -> None:
    entry = orjson.loads(encode(RECORD)) | change
    with pytest.raises(DecodeError) as info:
        structure(entry, Record)
    assert [fault.path for fault in info.value.faults] == [path]
    assert info.value.fields() == {path[0]}
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    assert str(info.value).startswith(f"${where}: ")


def test_missing_fields_and_wrong_shapes_are_decode_errors() -> None:
    with pytest.raises(DecodeError) as info:
        structure({"kind": "a"}, Record)
    assert info.value.fields() == {"count", "ratio", "flag", "items", "pairs"}
    assert "$.count: missing" in str(info.value)
    for value in ([1], "x", 3, None):
        with pytest.raises(DecodeError, match=r"^\$: expected an object, not "):
            structure(value, Record)
    with pytest.raises(DecodeError, match=r"^\$: not JSON"):
        decode(b'{"kind": "a", ', Record)


@given(st.binary())
def test_any_bytes_survive_as_text_or_base64(data: bytes) -> None:
    value = bytes_as_json(data)
    try:
        assert value == data.decode()
    except UnicodeDecodeError:
        assert isinstance(value, dict)
        assert set(value) == {"base64"}
    assert bytes_from_json(orjson.loads(orjson.dumps(value))) == data
    assert decode(encode(Inner("n", data)), Inner) == Inner("n", data)


# The recording: lines as written before the codec, byte for byte.

HEADER = RecordingHeader(
    created_ns=1_731_079_829_200_000_000,
    url=f"wss://ws.finazon.io/v1?apikey={KEY}",
    dataset="binance",
    tickers=("BTC/USDT", "ETH/USDT"),
    frequency="10s",
)
HEADER_LINE = (
    b'{"format":"finazon-trio/recording","version":1,"created_ns":1731079829200000000,'
    b'"source":{"url":"wss://ws.finazon.io/v1?apikey=***","dataset":"binance",'
    b'"tickers":["BTC/USDT","ETH/USDT"],"channel":"bars","frequency":"10s","aggregation":"1m"}}\n'
)
TEXT = 'quotes " and \\ backslash, ünïcødé 📈, \u2028 separator, a\nnewline\ttab'
ENTRIES: list[tuple[SourceEvent, bytes]] = [
    (Lifecycle(1_000, 1, "connected"), b'{"t_ns":1000,"conn":1,"event":"connected","reason":""}\n'),
    (
        Sent(1_001, 1, f'{{"event":"subscribe","apikey":"{KEY}"}}'),
        b'{"t_ns":1001,"conn":1,"dir":"out","text":"{\\"event\\":\\"subscribe\\",'
        b'\\"apikey\\":\\"***\\"}"}\n',
    ),
    (
        Received(1_002, 1, TEXT),
        b'{"t_ns":1002,"conn":1,"dir":"in","text":"quotes \\" and \\\\ backslash, '
        + "ünïcødé 📈, \u2028 separator, ".encode()
        + b'a\\nnewline\\ttab"}\n',
    ),
    (
        Lifecycle(1_004, 1, "disconnected", "ping timeout (10 s) — reconnecting"),
        b'{"t_ns":1004,"conn":1,"event":"disconnected","reason":"ping timeout (10 s) '
        + "—".encode()
        + b' reconnecting"}\n',
    ),
]


def test_recording_lines_are_written_as_before() -> None:
    assert encode_header(HEADER, [KEY]) == HEADER_LINE
    for event, line in ENTRIES:
        assert encode_entry(event, [KEY]) == line


def test_the_sample_recording_reads_and_is_written_again_byte_for_byte(tmp_path: Path) -> None:
    header = read_header(SAMPLE)
    entries = list(iter_entries(SAMPLE))
    events = [entry for entry in entries if not isinstance(entry, Corrupt)]
    assert len(events) == len(entries) == 1204
    path = tmp_path / "again.jsonl"
    write_recording(path, header, events)
    assert path.read_bytes() == SAMPLE.read_bytes()


def test_a_sparse_recording_of_an_earlier_writer_reads_with_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sparse.jsonl"
    path.write_bytes(
        b'{"format": "finazon-trio/recording", "version": 1, "source": {"tickers": ["AAPL"]},'
        b' "comment": "written by hand"}\n'
        b'{"t_ns": 5, "conn": 1, "event": "connected"}\n'  # no reason
        b'{"t_ns": 6, "conn": 1, "dir": "in", "text": "x", "extra": 1}\n'
        b'{"t_ns": 7, "conn": 1, "dir": null, "event": "disconnected", "reason": "eof"}\n'
    )
    assert read_header(path) == RecordingHeader(created_ns=0, url="", tickers=("AAPL",))
    assert list(iter_entries(path)) == [
        Lifecycle(5, 1, "connected"),
        Received(6, 1, "x"),
        Lifecycle(7, 1, "disconnected", "eof"),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"t_ns": 1, "conn": 1, "event": []}', "unknown entry"),  # raised TypeError before
        (b'{"t_ns": 1, "conn": 1, "event": {"a": 1}}', "unknown entry"),
        (b'{"t_ns": 1, "conn": true, "dir": "in", "text": ""}', "corrupt line"),
        (b'{"t_ns": 1, "conn": 1, "dir": ["in"], "text": ""}', "unknown frame direction"),
        (b'{"t_ns": 1, "conn": 1, "dir": "in", "text": null}', "corrupt line"),
        (b'{"t_ns": 1, "conn": 1, "event": "connected", "reason": null}', "corrupt line"),
    ],
)
def test_odd_entries_are_corrupt_lines_not_errors(tmp_path: Path, line: bytes, reason: str) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_bytes(HEADER_LINE + line + b"\n")
    (entry,) = iter_entries(path)
    assert isinstance(entry, Corrupt)
    assert entry.line_no == 2
    assert entry.reason.startswith(reason)


# The message log's lines of one message, as written before the codec.

MESSAGES: list[tuple[Message, int | None, str | None, bytes]] = [
    (
        ("ticks", b"AAPL", b'{"price":1.5}', T0_MS, None),
        None,
        "Broker: Message too large",
        b'{"topic":"ticks","key":"AAPL","value":"{\\"price\\":1.5}","timestamp":1731080000000,'
        b'"headers":null,"error":"Broker: Message too large"}\n',
    ),
    (
        ("bin", b"\xff\xfe", b"\x00\x80\xff", T0_MS + 2, [("h", b"\xc3\x28"), ("t", b"ok")]),
        7,
        None,
        b'{"topic":"bin","key":{"base64":"//4="},"value":{"base64":"AID/"},'
        b'"timestamp":1731080000002,"headers":[["h",{"base64":"wyg="}],["t","ok"]],'
        b'"received_ns":7}\n',
    ),
    (
        ("été", "€".encode(), "é".encode(), T0_MS + 3, [("réason", b"")]),
        0,
        "",
        '{"topic":"été","key":"€","value":"é","timestamp":1731080000003,'
        '"headers":[["réason",""]],"received_ns":0,"error":""}\n'.encode(),
    ),
]


@pytest.mark.parametrize(("message", "received_ns", "error", "line"), MESSAGES)
def test_message_lines_are_written_and_read_as_before(
    message: Message, received_ns: int | None, error: str | None, line: bytes
) -> None:
    assert message_log.encode(message, received_ns=received_ns, error=error) == line
    assert message_log.decode(line) == Outgoing(received_ns or 0, [message])


@pytest.mark.parametrize(
    "line",
    [
        b'{"topic": "t", "key": "k", "value": "v", "timestamp": true, "headers": null}',
        b'{"topic": "t", "key": "k", "value": "v", "timestamp": 1, "headers": "ab"}',
        b'{"topic": "t", "key": "k", "value": "v", "timestamp": 1, "headers": null, '
        b'"received_ns": "5"}',
    ],
)
def test_message_lines_of_the_wrong_types_are_refused(line: bytes) -> None:
    with pytest.raises(message_log.MessageLogError, match=r"^not a message line \(\$\."):
        message_log.decode(line)


# The protocol's client events and server replies, as sent before the codec.


def test_client_events_are_sent_as_before() -> None:
    sub = Subscription(dataset="sip_non_pro", frequency="10s", aggregation="1m")
    assert protocol.event_messages("unsubscribe", sub, ["AAPL", "BRK.B"]) == [
        '{"event":"unsubscribe","dataset":"sip_non_pro","channel":"bars","frequency":"10s",'
        '"aggregation":"1m","tickers":["AAPL","BRK.B"]}'
    ]
    assert protocol.HEARTBEAT == '{"event":"heartbeat"}'


def test_server_replies_are_sent_as_before() -> None:
    data = {"dataset": "sip_non_pro", "tickers": ["AAPL"], "channel": "bars"}
    assert protocol.success_message("SUCCESS_SUBSCRIPTION", data, 3) == (
        '{"status":"success","code":"SUCCESS_SUBSCRIPTION","data":{"dataset":"sip_non_pro",'
        '"tickers":["AAPL"],"channel":"bars"},"request_id":3}'
    )
    assert protocol.error_message("Ticker ZZZ is not supported") == (
        '{"status":"error","message":"Ticker ZZZ is not supported"}'
    )
    assert protocol.heartbeat_reply("r1") == (
        '{"event":"heartbeat","status":"success","request_id":"r1"}'
    )
    for request_id in (0, False, "", [1], {"a": None}):  # only None is left out
        reply = orjson.loads(protocol.error_message("x", request_id))
        assert reply == {"status": "error", "message": "x", "request_id": request_id}
