"""Fuzzing whole recordings through the pipeline: replay → transform → publisher → a real
broker, then consume everything back (the README, "Kafka and guarantees": bad frames,
truncated or corrupt recordings).

Hypothesis writes recordings of any shape: frames of any text (valid bars, broken bars,
``{"data": [...]}`` batches, protocol messages, garbage), sent frames and lifecycle events,
corrupt lines and a truncated last line. Whatever it writes, the run must end by itself with
every produced message acknowledged, Kafka must hold exactly what the independent oracle
(:mod:`tests.helpers.contract`) says for the valid frames, every other frame must be a counted
reject with a reason in the dead-letter topic, and every corrupt line must be logged by its
number.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from finazon_trio.observe.metrics import Metrics
from finazon_trio.pipeline import RunResult, run_pipeline
from finazon_trio.recording import RecordingHeader, encode_header
from finazon_trio.server.synthetic import generate_recording
from finazon_trio.settings import KafkaSettings, Settings, Subscription, VolumeFormat
from finazon_trio.sink.broker import EmbeddedBroker
from finazon_trio.source.replay import replay_source
from finazon_trio.transform.frames import REASONS

from .helpers.cli import Cli, output_args
from .helpers.contract import (
    Expected,
    assert_kafka_holds,
    assert_topic_matches,
    by_topic,
    expected_messages,
    valid_bar,
)
from .helpers.kafka import EXTERNAL, Record, consume_all, unique_output, unique_topic

T0 = 1_731_080_000
#: Bar times around T0, so that bars roll over and older ones come back (stale).
BAR_TIMES = (T0 - 60, T0, T0 + 60, float(T0 + 60), T0 + 120)
SYMBOLS = ("AAPL", "MSFT", "BTC/USDT", "Ω€")
NUMBER_FIELDS = ("t", "o", "h", "l", "c", "v")
#: A run that takes longer than this (real seconds) has stalled.
STALL_TIMEOUT = 60.0
#: Seconds to keep consuming after the expected count, to see extra records.
SETTLE = 0.2
EXAMPLES = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# WebSocket text frames are valid UTF-8: no lone surrogates.
text_chars = st.characters(blacklist_categories=["Cs"])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(text_chars, max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(text_chars, max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
prices = st.integers(0, 10**6) | st.floats(0, 1e6)
volumes = st.integers(0, 10**12) | st.floats(0, 1e12)


@st.composite
def bars(draw: st.DrawFn) -> dict[str, Any]:
    """A valid bar, with any of the optional fields."""
    low, a, b, high = sorted(draw(st.lists(prices, min_size=4, max_size=4)))
    if draw(st.booleans()):
        a, b = b, a
    bar: dict[str, Any] = {
        "s": draw(st.sampled_from(SYMBOLS)),
        "t": draw(st.sampled_from(BAR_TIMES)),
        "o": a,
        "h": high,
        "l": low,
        "c": b,
        "v": draw(volumes),
    }
    optional = {
        "d": st.sampled_from(["us_stocks_essential", "binance", " sip_pro "]),
        "p": st.just("finazon"),
        "ch": st.just("bars"),
        "f": st.sampled_from(["1s", "10s", "1m", " 1m", "10s "]),
        "aggr": st.sampled_from(["1m", " 1m"]),
    }
    for key, values in optional.items():
        if draw(st.booleans()):
            bar[key] = draw(values)
    return bar


@st.composite
def broken_bars(draw: st.DrawFn) -> dict[str, Any]:
    """A bar that the contract rejects, broken in one of the ways it names."""
    bar = draw(bars())
    kind = draw(st.sampled_from(["missing", "type", "symbol", "negative", "range"]))
    if kind == "missing":
        del bar[draw(st.sampled_from(["s", *NUMBER_FIELDS]))]
    elif kind == "type":
        bar[draw(st.sampled_from(NUMBER_FIELDS))] = draw(
            st.sampled_from(["12", None, True, [], {}])
        )
    elif kind == "symbol":
        bar["s"] = draw(st.sampled_from(["", 5, None, ["AAPL"]]))
    elif kind == "negative":
        bar[draw(st.sampled_from(NUMBER_FIELDS))] = -draw(st.integers(1, 10**6))
    else:
        field = draw(st.sampled_from(["o", "c", "l"]))
        bar[field] = bar["h"] + draw(st.integers(1, 100))  # above the high (or low above it)
    return bar


def dumps(value: object) -> str:
    return orjson.dumps(value).decode()


frame_texts = st.one_of(
    bars().map(dumps),
    broken_bars().map(dumps),
    st.lists(bars() | broken_bars() | json_values, max_size=4).map(
        lambda items: dumps({"ch": "bars", "data": items})
    ),
    st.text(text_chars, max_size=40),
    json_values.map(dumps),
    st.sampled_from(
        [
            '{"status":"success","code":"SUCCESS_SUBSCRIPTION","data":{"tickers":["AAPL"]}}',
            '{"event":"heartbeat","status":"success"}',
            '{"status":"error","message":"Ticker NOPE is not supported"}',
        ]
    ),
)
times_ns = st.integers(T0 * 10**9, (T0 + 3600) * 10**9)
connections = st.integers(1, 5)


@attrs.frozen
class Line:
    """One line of a fuzzed recording: its bytes, and the frame if it is a received one."""

    data: bytes
    frame: tuple[int, str] | None = None
    corrupt: bool = False


def received(t_ns: int, conn: int, text: str) -> Line:
    line = {"t_ns": t_ns, "conn": conn, "dir": "in", "text": text}
    return Line(orjson.dumps(line), frame=(t_ns, text))


def other_entry(t_ns: int, conn: int, kind: str, text: str) -> Line:
    entry: dict[str, object] = {"t_ns": t_ns, "conn": conn}
    entry |= {"dir": "out", "text": text} if kind == "out" else {"event": kind, "reason": text}
    return Line(orjson.dumps(entry))


#: Lines that cannot be an entry, however they are read.
corrupt_lines = st.one_of(
    st.just(b""),
    st.binary(max_size=30).map(lambda b: b"\xff" + b.replace(b"\n", b"")),
    st.sampled_from(
        [
            b"[1, 2, 3]",
            b'"text"',
            b'{"t_ns": "1", "conn": 1, "dir": "in", "text": "x"}',
            b'{"t_ns": 1, "conn": 1, "dir": "sideways", "text": "x"}',
            b'{"t_ns": 1, "conn": 1, "dir": "in", "text": 5}',
            b'{"t_ns": 1, "conn": 1}',
            b'{"t_ns": 1, "conn": 1, "event": "connected", "reason": 7}',
        ]
    ),
).map(lambda data: Line(data, corrupt=True))


@st.composite
def cut_lines(draw: st.DrawFn, lines: st.SearchStrategy[Line]) -> Line:
    """A valid line cut short: never valid JSON (an object without its closing brace)."""
    line = draw(lines)
    return Line(line.data[: draw(st.integers(0, len(line.data) - 1))], corrupt=True)


entries = st.one_of(
    st.builds(received, times_ns, connections, frame_texts),
    st.builds(
        other_entry,
        times_ns,
        connections,
        st.sampled_from(["out", "connected", "disconnected"]),
        st.text(text_chars, max_size=20),
    ),
    corrupt_lines,
)


@attrs.frozen
class Fuzzed:
    """A recording's header and lines, and how the last one ends."""

    frequency: str
    lines: list[Line]
    #: The last line has no newline (cut short, or whole).
    unterminated: bool

    def write(self, path: Path) -> Path:
        header = RecordingHeader(
            created_ns=T0 * 10**9, url="wss://ws.finazon.io/v1", frequency=self.frequency
        )
        body = b"".join(line.data + b"\n" for line in self.lines)
        if self.unterminated:
            body = body[:-1]
        path.write_bytes(encode_header(header) + body)
        return path

    def frames(self) -> list[tuple[int, str]]:
        return [line.frame for line in self.lines if line.frame is not None]

    def corrupt_line_numbers(self) -> list[int]:
        """Line numbers (the header is line 1) the replay must report; a blank last line
        without a newline is not a line at all."""
        numbers = [n for n, line in enumerate(self.lines, start=2) if line.corrupt]
        if self.unterminated and self.lines and self.lines[-1].data == b"" and numbers:
            numbers.pop()
        return numbers


@st.composite
def recordings(draw: st.DrawFn) -> Fuzzed:
    """Valid bar frames (at least one) with any other lines mixed in."""
    good = st.builds(received, times_ns, connections, bars().map(dumps))
    lines = draw(st.lists(good, min_size=1, max_size=12))
    for line in draw(st.lists(entries, max_size=12)):
        lines.insert(draw(st.integers(0, len(lines))), line)
    unterminated = draw(st.booleans())
    if unterminated and draw(st.booleans()):
        lines.append(draw(cut_lines(st.builds(received, times_ns, connections, frame_texts))))
    return Fuzzed(draw(st.sampled_from(["1s", "10s", "1m"])), lines, unterminated)


def dead_letters(frames: list[tuple[int, str]]) -> list[tuple[bytes, bytes]]:
    """(key, value) of every reject the contract asks for, in order: each item of a frame that
    is neither a protocol message nor a valid bar, and each valid bar older than its symbol's
    current bar. Items are what the contract calls them: the frame, or each element of a
    ``{"data": [...]}`` frame (re-encoded)."""
    current: dict[str, int] = {}
    out: list[tuple[bytes, bytes]] = []
    for _t_ns, text in frames:
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            out.append((b"", text.encode()))
            continue
        if isinstance(obj, dict) and ("event" in obj or "status" in obj):
            continue
        if isinstance(obj, dict) and isinstance(obj.get("data"), list):
            items = [(item, orjson.dumps(item)) for item in obj["data"]]
        else:
            items = [(obj, text.encode())]
        for item, raw in items:
            symbol = item.get("s") if isinstance(item, dict) else None
            key = symbol.encode() if isinstance(symbol, str) and symbol else b""
            if not valid_bar(item):
                out.append((key, raw))
            elif int(item["t"]) < current.get(item["s"], -math.inf):
                out.append((key, raw))  # stale
            else:
                current[item["s"]] = int(item["t"])
    return out


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    """A broker for many short runs: the external cluster if one is given, else the embedded
    broker (Apache Kafka runs the same pipeline in the other end-to-end tests)."""
    if EXTERNAL:
        yield EXTERNAL
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def consume(bootstrap: str, topic: str, count: int) -> list[Record]:
    return consume_all(bootstrap, topic, count, timeout=30.0, settle=SETTLE)


def assert_topic_holds(records: list[Record], expected: list[Expected]) -> None:
    if expected:
        assert_topic_matches(records, expected)
    else:
        assert records == []


@EXAMPLES
@given(
    fuzzed=recordings(),
    points=st.sampled_from([1, 2, 90]),
    volume_format=st.sampled_from(["descriptive", "raw"]),
)
def test_any_recording_publishes_the_contract_or_counted_rejects(
    bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    fuzzed: Fuzzed,
    points: int,
    volume_format: VolumeFormat,
) -> None:
    path = fuzzed.write(tmp_path_factory.mktemp("fuzz") / "rec.jsonl")
    output = unique_output(
        f"fuzz-{volume_format}",  # raw bars are checked against their own schema
        dead_letter_topic=unique_topic("fuzz-dead"),
        points=points,
        volume_format=volume_format,
    )
    settings = Settings(
        subscription=Subscription(frequency=fuzzed.frequency),
        output=output,
        kafka=KafkaSettings(endpoint=bootstrap),
        dashboard=False,
    )
    metrics = Metrics()
    logs = _Collect()

    async def run() -> RunResult:
        source = functools.partial(replay_source, path, metrics=metrics.source)
        with trio.fail_after(STALL_TIMEOUT):  # a stalled pipeline fails here
            return await run_pipeline(settings, source, metrics, handle_signals=False)

    replay_logger = logging.getLogger("finazon_trio.source.replay")
    replay_logger.addHandler(logs)
    try:
        result = trio.run(run)
    finally:
        replay_logger.removeHandler(logs)

    frames = fuzzed.frames()
    expected = expected_messages(
        frames,
        points=points,
        frequency=fuzzed.frequency,
        price_topic=output.price_ticks_topic,
        volume_topic=output.volume_stream_topic,
        volume_format=volume_format,
    )
    dead = dead_letters(frames)
    corrupt = fuzzed.corrupt_line_numbers()
    for what, count in (("bar", len(expected)), ("reject", len(dead)), ("corrupt", len(corrupt))):
        event(f"{what} lines: {'some' if count else 'none'}")
    assert result.ok, result
    assert result.produced == len(expected) + len(dead)
    assert metrics.source.frames == len(frames)

    assert metrics.source.corrupt_lines == len(corrupt)
    for line_no in corrupt:
        assert any(m.startswith(f"{path}:{line_no}: ") for m in logs.messages), line_no

    rejects = metrics.transform.rejects
    assert rejects.total() == metrics.transform.dead_letters == len(dead)
    records = consume(bootstrap, output.dead_letter_topic or "", len(dead))
    assert [(r.key or b"", r.value) for r in records] == dead
    reasons = Counter(dict(r.headers)["reason"].decode() for r in records)
    assert reasons == rejects
    assert set(reasons) <= set(REASONS)
    assert all(dict(r.headers)["detail"] for r in records)

    for topic in (output.price_ticks_topic, output.volume_stream_topic):
        want = by_topic(expected, topic)
        assert_topic_holds(consume(bootstrap, topic, len(want)), want)


def test_cli_replays_a_damaged_recording_and_names_each_bad_line(
    bootstrap: str, tmp_path: Path
) -> None:
    path = generate_recording(tmp_path / "rec.jsonl", ["AAPL", "MSFT"], minutes=1, start_s=T0)
    lines = path.read_bytes().split(b"\n")[:-1]
    last = len(lines)  # a lifecycle event: the file now ends inside it
    lines[9] = b"\x00\x01 not a line"
    lines[19] = lines[19][:30]
    path.write_bytes(b"\n".join(lines)[:-15])
    ticks, volumes = unique_topic("damaged-ticks"), unique_topic("damaged-volume")
    with Cli("replay", path, *output_args(bootstrap, ticks, volumes), cwd=tmp_path) as cli:
        assert cli.finish() == 0, cli.tail()
    for line_no, reason in ((10, "corrupt line (not JSON)"), (20, "corrupt line (not JSON)")):
        assert f"{path}:{line_no}: {reason} skipped" in cli.stderr
    assert f"{path}:{last}: truncated line skipped" in cli.stderr
    assert f"{path}: 3 corrupt lines skipped" in cli.stderr
    assert "Traceback" not in cli.stderr
    # Everything else went through: the frames of the whole lines, and only those.
    whole = [orjson.loads(line) for n, line in enumerate(lines, 1) if n not in (1, 10, 20, last)]
    frames = [(e["t_ns"], e["text"]) for e in whole if e.get("dir") == "in"]
    summary = cli.summary()
    assert summary["frames received"] == len(frames)
    assert summary["corrupt recording lines"] == 3
    assert summary["delivered"] == summary["produced"]
    assert assert_kafka_holds(bootstrap, frames, ticks, volumes) == summary["produced"]
