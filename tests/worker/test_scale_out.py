"""Scaling out for real: the ingest role and ``expand`` workers as processes against Apache
Kafka, killed, stopped, frozen and joined mid-stream; the output consumed back with
``read_committed`` and compared message by message (README, "Scaling out").

One broker serves the whole module (the last test kills and restarts it). Each test has its own
topics and group. The recordings are small (a few tickers, a few minutes) and replayed at a
multiple of their pace, so that the stream is still flowing when a worker is disturbed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from finazon_trio.events import Received
from finazon_trio.observe.metrics import TransformMetrics
from finazon_trio.recording import iter_entries, read_header
from finazon_trio.server.synthetic import generate_recording
from finazon_trio.settings import Output
from finazon_trio.transform.stage import Transformer

from ..helpers.cli import command
from ..helpers.kafka import ApacheKafka, create_topic, unique_topic
from ..helpers.waiting import wait_until

pytestmark = pytest.mark.kafka

TICKERS = ["AAPL", "MSFT", "GOOGL", "AMZN", "TSLA", "NVDA", "META", "NFLX"]
#: librdkafka settings for quick failovers: the broker's minimum session timeout (6 s).
FAST_GROUP = ("session.timeout.ms=6000", "heartbeat.interval.ms=500")
POINTS = 10
#: Per key, the (value, timestamp) of every record in order.
ByKey = dict[bytes, list[tuple[bytes, int]]]


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    with ApacheKafka(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 tickers × 2 minutes of 1 s updates: 960 bar frames."""
    path = tmp_path_factory.mktemp("rec") / "rec.jsonl"
    return generate_recording(path, TICKERS, minutes=2, seed=7, start_s=1_731_080_430)


@attrs.frozen
class Topics:
    frames: str
    ticks: str
    volume: str
    group: str

    @classmethod
    def new(cls) -> Topics:
        return cls(*(unique_topic(name) for name in ("frames", "ticks", "volume", "group")))

    def output(self) -> Output:
        return Output(price_ticks_topic=self.ticks, volume_stream_topic=self.volume, points=POINTS)

    def output_args(self) -> list[str]:
        return [
            *("--price-ticks-topic", self.ticks, "--volume-stream-topic", self.volume),
            *("--points", str(POINTS), "--no-dashboard"),
        ]


def kafka_args(bootstrap: str, *config: str) -> list[str]:
    return ["--kafka-endpoint", bootstrap, *(a for c in config for a in ("--kafka-config", c))]


class Worker:
    """One ``finazon-trio expand`` process; its log in a file."""

    def __init__(
        self,
        topics: Topics,
        bootstrap: str,
        log: Path,
        *extra: str,
        worker_id: str | None = None,
    ) -> None:
        args = [
            "expand",
            *("--frames-topic", topics.frames, "--group", topics.group),
            *("--commit-interval", "0.05"),
            *topics.output_args(),
            *kafka_args(bootstrap, *FAST_GROUP),
            *extra,
        ]
        if worker_id is not None:
            args += ["--worker-id", worker_id]
        self.log = log
        self._file = log.open("w")
        self.process = subprocess.Popen(command(*args), stdout=self._file, stderr=self._file)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._file.close()

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """The test's workers: whatever is still running at the end is killed."""
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.process.poll() is None:
            os.kill(worker.process.pid, signal.SIGCONT)
            worker.process.kill()
            worker.wait()


def ingest(
    recording: Path, topics: Topics, bootstrap: str, *, speed: float | None = None
) -> subprocess.Popen[bytes]:
    args = ["replay", recording, "--frames-topic", topics.frames, "--no-dashboard"]
    if speed is not None:
        args += ["--speed", str(speed)]
    return subprocess.Popen(
        command(*args, *kafka_args(bootstrap)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def expected(recording: Path, output: Output) -> dict[str, ByKey]:
    """What the single-process pipeline publishes for ``recording``, per topic and key."""
    transformer = Transformer(output, read_header(recording).subscription(), TransformMetrics())
    out: dict[str, ByKey] = defaultdict(lambda: defaultdict(list))
    for entry in iter_entries(recording):
        if isinstance(entry, Received):
            for topic, key, value, timestamp, _ in transformer.on_frame(entry.t_ns, entry.text):
                out[topic][key].append((value, timestamp))
    return out


def read_committed(bootstrap: str, topic: str, count: int, timeout: float = 150) -> ByKey:
    """Every committed record of ``topic`` per key, once ``count`` have arrived (and 1 s more,
    so that duplicates would show)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_topic("check"),
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    out: ByKey = defaultdict(list)
    seen = 0
    try:
        wait_until(
            lambda: bool(consumer.list_topics(topic, timeout=30).topics[topic].partitions),
            f"topic {topic}",
        )
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + timeout
        settle: float | None = None
        while settle is None or time.monotonic() < settle:
            if settle is None and seen >= count:
                settle = time.monotonic() + 1.0
            assert time.monotonic() < deadline, f"{seen} of {count} records in {topic}"
            for message in consumer.consume(10_000, 0.2):
                if message.error() is None:
                    key, value = message.key(), message.value()
                    assert isinstance(key, bytes)
                    assert isinstance(value, bytes)
                    out[key].append((value, message.timestamp()[1]))
                    seen += 1
    finally:
        consumer.close()
    return out


def assert_exactly_once(bootstrap: str, topics: Topics, recording: Path) -> None:
    """Each output topic holds, per symbol, exactly the single-process records in order."""
    want = expected(recording, topics.output())
    for topic in (topics.ticks, topics.volume):
        wanted = want[topic]
        got = read_committed(bootstrap, topic, sum(map(len, wanted.values())))
        assert set(got) == set(wanted)
        for key, records in wanted.items():
            assert got[key] == records, f"{topic} {key!r}: {len(got[key])} of {len(records)}"


def assigned(*some: Worker) -> Callable[[], bool]:
    """Whether one of ``some`` has been assigned partitions."""
    return lambda: any("assigned partitions" in worker.text() for worker in some)


def test_ingest_and_two_workers_publish_the_single_process_topics(
    kafka: ApacheKafka, recording: Path, workers: list[Worker], tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap
    single = Topics.new()
    replay = subprocess.run(
        command("replay", recording, *single.output_args(), *kafka_args(bootstrap)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stderr
    split = Topics.new()
    ingest_run = ingest(recording, split, bootstrap)
    assert ingest_run.wait(120) == 0
    for n in range(2):
        workers.append(Worker(split, bootstrap, tmp_path / f"w{n}.log"))
    want = expected(recording, single.output())
    for topic_a, topic_b in ((single.ticks, split.ticks), (single.volume, split.volume)):
        count = sum(map(len, want[topic_a].values()))
        a = read_committed(bootstrap, topic_a, count)
        b = read_committed(bootstrap, topic_b, count)
        assert a == want[topic_a]
        assert b == a
    assert all(worker.stop() == 0 for worker in workers)
    assert "SIGTERM: committing" in workers[0].text()


def test_a_worker_killed_mid_stream_hands_over_exactly_once(
    kafka: ApacheKafka, recording: Path, workers: list[Worker], tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap
    topics = Topics.new()
    create_topic(bootstrap, topics.frames, 6)
    run = ingest(recording, topics, bootstrap, speed=10)  # 12 s of stream
    workers += [Worker(topics, bootstrap, tmp_path / f"w{n}.log") for n in range(2)]
    wait_until(assigned(*workers), "an assignment")
    time.sleep(3)
    workers[0].process.kill()
    assert run.wait(120) == 0
    assert_exactly_once(bootstrap, topics, recording)
    assert workers[1].stop() == 0


def test_a_worker_joining_and_one_leaving_mid_stream_keep_exactly_once(
    kafka: ApacheKafka, recording: Path, workers: list[Worker], tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap
    topics = Topics.new()
    create_topic(bootstrap, topics.frames, 6)
    run = ingest(recording, topics, bootstrap, speed=10)
    workers.append(Worker(topics, bootstrap, tmp_path / "first.log"))
    wait_until(assigned(workers[0]), "the first worker")
    time.sleep(2)
    workers.append(Worker(topics, bootstrap, tmp_path / "second.log"))  # a rebalance
    wait_until(assigned(workers[1]), "the second worker")
    time.sleep(2)
    assert workers[0].stop() == 0  # SIGTERM mid-stream: commit, leave
    assert run.wait(120) == 0
    assert_exactly_once(bootstrap, topics, recording)
    assert "revoked partitions" in workers[0].text()
    assert workers[1].stop() == 0


def test_a_frozen_worker_replaced_under_its_id_is_fenced_and_duplicates_nothing(
    kafka: ApacheKafka, recording: Path, workers: list[Worker], tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap
    topics = Topics.new()
    create_topic(bootstrap, topics.frames, 3)
    run = ingest(recording, topics, bootstrap, speed=10)
    workers.append(Worker(topics, bootstrap, tmp_path / "old.log", worker_id="w1"))
    wait_until(assigned(workers[0]), "the first worker")
    time.sleep(2)
    workers[0].signal(signal.SIGSTOP)
    time.sleep(7)  # past the session timeout
    workers.append(Worker(topics, bootstrap, tmp_path / "new.log", worker_id="w1"))
    assert run.wait(120) == 0
    assert_exactly_once(bootstrap, topics, recording)
    workers[0].signal(signal.SIGCONT)
    status = workers[0].wait(60)
    errors = [line for line in workers[0].text().splitlines() if line.startswith("error:")]
    assert status != 0
    assert len(errors) == 1, workers[0].text()[-2000:]
    assert "fenced" in errors[0]
    assert_exactly_once(bootstrap, topics, recording)  # still: nothing of it became visible
    assert workers[1].stop() == 0


def test_records_that_are_not_frames_records_are_skipped_and_dead_lettered(
    kafka: ApacheKafka, recording: Path, workers: list[Worker], tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap
    topics = Topics.new()
    create_topic(bootstrap, topics.frames, 1)
    # The good records, as the ingest role makes them, with bad ones between them.
    frames = Transformer(
        Output(frames_topic=topics.frames),
        read_header(recording).subscription(),
        TransformMetrics(),
    )
    producer = Producer({"bootstrap.servers": bootstrap})
    bad = [b"garbage", b'{"version": 99, "s": "AAPL"}', b"[]"]
    k = 0
    for entry in iter_entries(recording):
        if isinstance(entry, Received):
            for topic, key, value, timestamp, _ in frames.on_frame(entry.t_ns, entry.text):
                producer.produce(topic, value, key, timestamp=timestamp)
                if k < len(bad) and key == b"MSFT":
                    producer.produce(topic, bad[k], key)
                    k += 1
    assert producer.flush(30) == 0
    dead = unique_topic("dead")
    worker = Worker(topics, bootstrap, tmp_path / "w.log", "--dead-letter-topic", dead)
    workers.append(worker)
    assert_exactly_once(bootstrap, topics, recording)
    dead_letters = read_committed(bootstrap, dead, len(bad))
    assert [value for value, _ in dead_letters[b"MSFT"]] == bad
    assert worker.process.poll() is None
    assert worker.stop() == 0
    text = worker.text()
    assert "skipped a record that is not a frames record" in text


def test_workers_resume_exactly_once_after_the_broker_is_killed_and_restarted(
    kafka: ApacheKafka, recording: Path, workers: list[Worker], tmp_path: Path
) -> None:
    """A worker stuck inside librdkafka after the restart (docs/scaling-out.md, "Broker
    restarts") ends with one error line; a supervisor's restart under the same id recovers."""
    bootstrap = kafka.bootstrap
    topics = Topics.new()
    create_topic(bootstrap, topics.frames, 4)
    run = ingest(recording, topics, bootstrap, speed=10)
    workers += [
        Worker(topics, bootstrap, tmp_path / f"w{n}.log", worker_id=f"w{n}") for n in range(2)
    ]
    wait_until(assigned(*workers), "an assignment")
    time.sleep(2)
    kafka.kill()
    time.sleep(2)
    kafka.start()
    restarts: list[str] = []
    done = threading.Event()

    def supervise() -> None:  # what systemd or Kubernetes would do
        while not done.wait(0.5):
            for n, worker in enumerate(workers):
                if worker.process.poll() is not None:
                    restarts.append(worker.text().splitlines()[-1])
                    log = tmp_path / f"w{n}-{len(restarts)}.log"
                    workers[n] = Worker(topics, bootstrap, log, worker_id=f"w{n}")

    supervisor = threading.Thread(target=supervise)
    supervisor.start()
    try:
        assert run.wait(180) == 0
        assert_exactly_once(bootstrap, topics, recording)
    finally:
        done.set()
        supervisor.join()
    assert all(stuck(line) for line in restarts), restarts
    for worker in workers:  # one may be stuck still: its watchdog ends it, as above
        status = worker.stop()
        assert status == 0 or stuck(worker.text().splitlines()[-1]), worker.text()[-2000:]


def stuck(line: str) -> bool:
    """The line a worker stuck inside librdkafka ends with (docs/scaling-out.md)."""
    return line.startswith("error:") and "has not returned" in line
