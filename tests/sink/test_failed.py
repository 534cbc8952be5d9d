"""Undelivered messages: the JSONL format, the failed-messages file, and ``republish``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from finazon_trio.errors import FinazonTrioError
from finazon_trio.events import Message, Outgoing
from finazon_trio.observe.metrics import PublisherMetrics
from finazon_trio.server.synthetic import generate_recording
from finazon_trio.settings import KafkaSettings, Output
from finazon_trio.sink.admin import ensure_topics
from finazon_trio.sink.failed import FailedFile, left_behind, message_files, read_messages
from finazon_trio.sink.message_log import (
    MessageLogError,
    batches,
    decode,
    encode,
    encode_batch,
    read_lines,
)
from finazon_trio.sink.publisher import ABANDONED, Publisher, producer_config

from ..helpers.cli import run_cli
from ..helpers.contract import assert_topic_matches, by_topic, expect
from ..helpers.kafka import consume_all, create_topic, free_port, unique_topic
from ..helpers.paths import SAMPLE

T0_MS = 1_731_080_000_000
#: Records Kafka keeps: its retention (7 days) deletes older ones, maybe while a test runs.
NOW_MS = int(time.time() * 1000)

ODD: list[Message] = [
    ("ticks", b"AAPL", b'{"price":1.5}', T0_MS, None),
    ("ticks", b"AAPL", b"", T0_MS + 1, []),  # empty value; empty (not absent) headers
    ("bin", b"\xff\xfe", b"\x00\x80\xff", T0_MS + 2, [("h", b"\xc3\x28"), ("t", b"ok")]),
    ("\u00e9t\u00e9", "\u20ac".encode(), "\u00e9".encode(), T0_MS + 3, [("r\u00e9ason", b"")]),
]


def test_messages_survive_a_round_trip_exactly() -> None:
    for received_ns in (None, 10**18):
        lines = [encode(m, received_ns=received_ns, error="why") for m in ODD]
        assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
        assert [decode(line) for line in lines] == [Outgoing(received_ns or 0, [m]) for m in ODD]


@pytest.mark.parametrize(
    "messages",
    [
        ODD,
        ODD[:1],
        [],
        [ODD[0], ("t", b"k", b"v", 5, None)],  # no headers at all: a null column
        [(*m[:4], None) for m in ODD[1:]],  # binary, no headers
    ],
)
def test_batches_survive_a_round_trip_in_one_line(messages: list[Message]) -> None:
    line = encode_batch(Outgoing(10**18, messages))
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    assert decode(line) == Outgoing(10**18, messages)


_BYTES = st.binary(max_size=20) | st.text(max_size=20).map(str.encode)
_MESSAGES = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=10),
        _BYTES,
        _BYTES,
        st.integers(min_value=0, max_value=2**63 - 1),
        st.none() | st.lists(st.tuples(st.text(max_size=10), _BYTES), max_size=3),
    ),
    max_size=30,
)


@given(st.integers(min_value=0, max_value=2**63 - 1), _MESSAGES)
@settings(max_examples=200, deadline=None)
def test_any_batch_survives_a_round_trip(received_ns: int, messages: list[Message]) -> None:
    assert decode(encode_batch(Outgoing(received_ns, messages))) == Outgoing(received_ns, messages)


def test_batch_lines_are_readable_json_in_columns() -> None:
    entry = orjson.loads(encode_batch(Outgoing(7, [ODD[0], ODD[2]])))
    assert entry == {
        "received_ns": 7,
        "topics": ["ticks", "bin"],
        "keys": ["AAPL", {"base64": "//4="}],
        "values": ['{"price":1.5}', {"base64": "AID/"}],
        "timestamps": [T0_MS, T0_MS + 2],
        "headers": [None, [["h", {"base64": "wyg="}], ["t", "ok"]]],
    }
    assert orjson.loads(encode_batch(Outgoing(7, ODD[:1])))["headers"] is None


def test_lines_are_readable_json_with_text_where_possible() -> None:
    entry = orjson.loads(encode(ODD[0], error="Broker: Message too large"))
    assert entry == {
        "topic": "ticks",
        "key": "AAPL",
        "value": '{"price":1.5}',
        "timestamp": T0_MS,
        "headers": None,
        "error": "Broker: Message too large",
    }
    binary = orjson.loads(encode(ODD[2]))
    assert binary["value"] == {"base64": "AID/"}
    assert binary["headers"] == [["h", {"base64": "wyg="}], ["t", "ok"]]


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"topic": "t", "key": "k", "value": "v", "timestamp": 1}',  # no headers
        b'{"topic": "t", "key": "k", "value": "v", "timestamp": "1", "headers": null}',
        b'{"topic": "t", "key": 5, "value": "v", "timestamp": 1, "headers": null}',
        b'{"topic": "t", "key": {"base64": "!!"}, "value": "v", "timestamp": 1, "headers": null}',
        b'{"topic": "t", "key": "k", "value": "v", "timestamp": 1, "headers": [["a"]]}',
        encode(ODD[0])[:-10],  # truncated
        b'{"topics": ["t"], "keys": ["k"], "values": ["v", "w"], "timestamps": [1], '
        b'"headers": null}',  # columns of different lengths
        b'{"topics": ["t"], "keys": ["k"], "values": ["v"], "timestamps": [1], '
        b'"headers": [null, null]}',
        b'{"topics": [1], "keys": ["k"], "values": ["v"], "timestamps": [1], "headers": null}',
        b'{"topics": ["t"], "keys": ["k"], "values": ["v"], "timestamps": [1.5], "headers": null}',
        b'{"topics": ["t"], "keys": [5], "values": ["v"], "timestamps": [1], "headers": null}',
        b'{"topics": ["t"], "keys": ["k"], "values": ["v"], "timestamps": [1]}',  # no headers
        encode_batch(Outgoing(1, ODD))[:-10],
    ],
)
def test_a_line_that_is_not_a_message_is_refused(line: bytes) -> None:
    with pytest.raises(MessageLogError):
        decode(line)


def test_reading_back_stops_at_whole_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finazon_trio.sink import message_log

    monkeypatch.setattr(message_log, "READ_CHUNK", 64)
    lines = [encode(("t", b"k", b"x" * n, n, None)) for n in (1, 200, 3, 4)]
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"".join(lines))
    end, offset, got = path.stat().st_size, 0, []
    while offset < end:
        chunk, offset = read_lines(path, offset, end)
        assert chunk, "no progress"
        got += chunk
    assert [line + b"\n" for line in got] == lines


def test_batches_regroup_each_frame() -> None:
    lines = [Outgoing(1, [m]) for m in ODD[:3]] + [Outgoing(2, ODD[3:])]
    lines += [Outgoing(3, [m]) for m in ODD] + [Outgoing(4, ODD), Outgoing(5, ODD[:1])]
    out = list(batches(lines, size=3))
    assert [(o.t_ns, len(o.messages)) for o in out] == [
        (1, 3),
        (2, 1),
        (3, 3),
        (3, 1),
        (4, 3),
        (4, 1),
        (5, 1),
    ]
    assert [m for o in out for m in o.messages] == [m for o in lines for m in o.messages]


def test_spool_segments_of_either_kind_are_read_in_order(tmp_path: Path) -> None:
    """A spool directory left by an earlier version (a message per line) next to batch lines."""
    spool = tmp_path / "spool"
    spool.mkdir()
    old = b"".join(encode(m, received_ns=1) for m in ODD)
    (spool / "segment-00000001.jsonl").write_bytes(old)
    new = [Outgoing(2, ODD[:2]), Outgoing(3, ODD[2:])]
    (spool / "segment-00000002.jsonl").write_bytes(b"".join(map(encode_batch, new)))
    corrupt: list[str] = []
    out = list(read_messages(message_files([spool]), corrupt))
    assert not corrupt
    assert [m for o in out for m in o.messages] == ODD + ODD
    assert [o.t_ns for o in out] == [1, 2, 3]


def test_the_failed_file_appears_with_the_first_failure_and_takes_any_thread(
    tmp_path: Path,
) -> None:
    failed = FailedFile(tmp_path / "sub" / "failed.jsonl")
    failed.write_pending()
    assert not failed.path.exists()

    def add(n: int) -> None:
        for i in range(500):
            failed.add(("t", b"%d" % n, b"%d" % i, i, None), "why")
            if i % 100 == 0:
                failed.write_pending()

    threads = [threading.Thread(target=add, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed.write_pending()
    kept = [m for o in read_messages([failed.path], []) for m in o.messages]
    assert failed.written == len(kept) == 2000
    for n in range(4):  # each thread's messages in its order
        assert [int(m[2]) for m in kept if m[1] == b"%d" % n] == list(range(500))


def test_a_failed_file_that_cannot_be_written_is_reported_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    failed = FailedFile(tmp_path / "file" / "failed.jsonl")  # a file where a dir should be
    failed.add(ODD[0], "why")
    with caplog.at_level(logging.ERROR):
        failed.write_pending()
    assert "cannot write 1 undelivered messages to" in caplog.text
    assert failed.written == 0


def test_message_files_takes_files_and_spool_directories_in_order(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    for name in ("segment-00000002.jsonl", "segment-00000001.jsonl", "notes.txt"):
        (spool / name).write_text("")
    single = tmp_path / "failed.jsonl"
    single.write_text("")
    assert message_files([single, spool]) == [
        single,
        spool / "segment-00000001.jsonl",
        spool / "segment-00000002.jsonl",
    ]
    with pytest.raises(FinazonTrioError, match=r"nowhere\.jsonl: no such file"):
        message_files([tmp_path / "nowhere.jsonl"])


async def test_purged_messages_are_written_in_the_order_they_were_produced(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique_topic("purged")
    # A long linger keeps them in the local queues (one per partition) until purged.
    config = producer_config(KafkaSettings(config=(("linger.ms", "60000"),)), kafka_bootstrap)
    await ensure_topics(config, [topic], partitions=3, replication_factor=1)
    sent = [
        Outgoing(
            n, [(topic, b"K%d" % (n % 5), b"%d-%d" % (n, i), T0_MS + n, None) for i in range(9)]
        )
        for n in range(300)
    ]
    failed = FailedFile(tmp_path / "failed.jsonl")
    metrics = PublisherMetrics()
    publisher = Publisher(config, metrics, flush_timeout=30, failed=failed)
    send, receive = trio.open_memory_channel[Outgoing](0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run, receive)
        async with send:
            for outgoing in sent:
                await send.send(outgoing)
            publisher.abandon_flush("a second Ctrl-C")  # purge at once
            await send.send(Outgoing(0, [(topic, b"late", b"late", T0_MS, None)]))

    everything = [m for o in sent for m in o.messages] + [(topic, b"late", b"late", T0_MS, None)]
    kept = [m for o in read_messages([failed.path], []) for m in o.messages]
    assert kept == everything
    assert publisher.unflushed == metrics.produced == len(everything)
    assert metrics.delivered == metrics.failed == 0
    last = orjson.loads(failed.path.read_bytes().splitlines()[-1])
    assert last["error"] == ABANDONED
    warning = f"{len(everything)} messages were not acknowledged by Kafka at "
    assert any(
        m.startswith(warning) and m.endswith(": a second Ctrl-C") for m in caplog.messages
    ), caplog.messages


def test_failed_deliveries_go_to_the_failed_file_and_republish_completes_the_run(
    strict_bootstrap: str, tmp_path: Path
) -> None:
    """A replay into a volume topic that does not exist (yet): those messages fail and go to
    the failed file; once the topic exists, ``republish`` publishes them, and Kafka holds the
    whole contract, each symbol's messages in order."""
    output = Output(
        price_ticks_topic=create_topic(strict_bootstrap, unique_topic("f-ticks")),
        volume_stream_topic=unique_topic("f-volume"),
    )
    recording = generate_recording(tmp_path / "rec.jsonl", ["AAPL", "MSFT", "BRK.B"], minutes=2)
    failed = tmp_path / "failed.jsonl"
    run = run_cli(
        "replay", recording, "--no-dashboard", "--kafka-endpoint", strict_bootstrap,
        "--price-ticks-topic", output.price_ticks_topic,
        "--volume-stream-topic", output.volume_stream_topic,
        "--no-create-topics", "--kafka-config", "topic.metadata.propagation.max.ms=1000",
        "--failed-path", failed,
    )  # fmt: skip
    expected = expect(recording, output)
    volumes = by_topic(expected, output.volume_stream_topic)
    ticks = by_topic(expected, output.price_ticks_topic)
    assert run.returncode == 1, run.stderr[-3000:]
    assert f"finazon-trio republish {failed}" in run.stderr
    assert "Traceback" not in run.stderr
    kept = [m for o in read_messages([failed], []) for m in o.messages]
    assert [(m[1], orjson.loads(m[2]), m[3]) for m in kept] == [
        (v.key, v.value, v.timestamp) for v in volumes
    ]

    create_topic(strict_bootstrap, output.volume_stream_topic)
    again = run_cli("republish", failed, "--kafka-endpoint", strict_bootstrap)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(volumes)} delivered, 0 failed" in again.stderr
    assert_topic_matches(consume_all(strict_bootstrap, output.price_ticks_topic, len(ticks)), ticks)
    assert_topic_matches(
        consume_all(strict_bootstrap, output.volume_stream_topic, len(volumes)), volumes
    )


def test_republish_publishes_bytes_exactly_and_reports_bad_lines(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = create_topic(kafka_bootstrap, unique_topic("republish"))
    messages = [(topic, k, v, NOW_MS + ts - T0_MS, h) for _, k, v, ts, h in ODD]
    path = tmp_path / "failed.jsonl"
    lines = [encode(m, error="why") for m in messages]
    path.write_bytes(b"".join(lines[:2]) + b"garbage\n" + b"".join(lines[2:]))

    run = run_cli("republish", path, "--kafka-endpoint", kafka_bootstrap)

    assert run.returncode == 1  # a line could not be published
    assert f"{path}:3: not a message line" in run.stderr
    assert f"{len(messages)} delivered" in run.stderr
    records = consume_all(kafka_bootstrap, topic, len(messages))
    assert [(r.key, r.value, r.timestamp, r.headers) for r in records] == [
        (key, value, ts, headers or []) for _, key, value, ts, headers in messages
    ]


def test_republish_needs_a_real_kafka_and_a_file_that_exists(tmp_path: Path) -> None:
    path = tmp_path / "failed.jsonl"
    path.write_bytes(encode(ODD[0]))
    run = run_cli("republish", path)
    assert run.returncode != 0
    assert "republish needs --kafka-endpoint" in run.stderr
    run = run_cli("republish", tmp_path / "none.jsonl", "--kafka-endpoint", "127.0.0.1:9")
    assert run.returncode != 0
    assert "none.jsonl: no such file or directory" in run.stderr
    unreachable = f"127.0.0.1:{free_port()}"
    run = run_cli("republish", path, "--kafka-endpoint", unreachable, "--kafka-wait", "1")
    assert run.returncode != 0
    assert f"Kafka at {unreachable} did not answer within 1 s" in run.stderr
    assert "Traceback" not in run.stderr


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_left_behind_lists_what_earlier_runs_left_oldest_first(tmp_path: Path) -> None:
    dead, alive = dead_pid(), os.getpid()
    files = {
        f"failed-20240102T000000Z-{dead}.jsonl": b"x\n",
        f"failed-20240101T000000Z-{dead}.jsonl": b"x\n",
        f"failed-20231231T000000Z-{dead}.jsonl": b"",  # empty: nothing to publish
        f"failed-20240103T000000Z-{alive}.jsonl": b"x\n",  # a run still going
        f"live-20240101T000000Z-{dead}/segment-00000001.jsonl": b"x\n",
        f"live-20240104T000000Z-{alive}/segment-00000001.jsonl": b"x\n",
        "unrelated.jsonl": b"x\n",
    }
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    (tmp_path / f"live-20240105T000000Z-{dead}").mkdir()  # drained: no segments
    assert left_behind(tmp_path) == [
        tmp_path / f"failed-20240101T000000Z-{dead}.jsonl",
        tmp_path / f"live-20240101T000000Z-{dead}",
        tmp_path / f"failed-20240102T000000Z-{dead}.jsonl",
    ]
    assert left_behind(tmp_path / "nowhere") == []


def test_a_run_names_what_earlier_runs_left_behind(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    leftover = spool / f"failed-20240101T000000Z-{dead_pid()}.jsonl"
    spool.mkdir()
    leftover.write_bytes(b"x\n")
    run = run_cli("replay", SAMPLE, "--no-dashboard", "--spool-dir", spool)
    assert run.returncode == 0, run.stderr
    assert (
        "earlier runs left undelivered messages behind; publish them, in this order, with: "
        f"finazon-trio republish {leftover}" in " ".join(run.stderr.split())
    ), run.stderr
