"""The scale-out measurements (README, "Scaling out"): the expansion worker's cost per message
with and without transactions (its own loop both times), one against two worker processes,
and the latency from a frames record to its ticks visible to a ``read_committed`` consumer.

Every measurement reads a frames topic filled beforehand by :func:`fill_frames` (the ingest
role's records of the benchmark's recording), except :func:`latency`, which produces frames
records with the current time as event time, at a fixed rate, while one worker runs.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupState,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from finazon_trio.events import Received
from finazon_trio.observe.metrics import TransformMetrics
from finazon_trio.recording import iter_entries, read_header
from finazon_trio.settings import KafkaSettings, Output, Subscription
from finazon_trio.transform.frames import Reject
from finazon_trio.transform.record import encode
from finazon_trio.transform.stage import Transformer
from finazon_trio.transform.state import BarStates
from finazon_trio.worker.clients import client_configs
from finazon_trio.worker.config import (
    DEFAULT_COMMIT_INTERVAL,
    DEFAULT_FRAMES_PARTITIONS,
    WorkerSettings,
)
from finazon_trio.worker.consumer import ExpandLoop
from finazon_trio.worker.metrics import WorkerMetrics

from .live_client import _cpu_seconds

ROOT = Path(__file__).resolve().parent.parent


def fill_frames(recording: str, bootstrap: str, topic: str) -> int:
    """The ingest role's records of ``recording`` in ``topic`` (12 partitions); how many."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, DEFAULT_FRAMES_PARTITIONS, 1)])[topic].result(30)
    path = Path(recording)
    ingest = Transformer(
        Output(frames_topic=topic), read_header(path).subscription(), TransformMetrics()
    )
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True}
    )
    count = 0
    for entry in iter_entries(path):
        if isinstance(entry, Received):
            for t, key, value, timestamp, _ in ingest.on_frame(entry.t_ns, entry.text):
                while True:
                    try:
                        producer.produce(t, value, key, timestamp=timestamp)
                        break
                    except BufferError:
                        producer.poll(0.1)
                count += 1
    assert producer.flush(60) == 0
    return count


def _output(tag: str, bootstrap: str | None = None) -> Output:
    """The output topics of one measurement; created if ``bootstrap`` is given."""
    out = Output(price_ticks_topic=f"ticks-{tag}", volume_stream_topic=f"volume-{tag}")
    if bootstrap is not None:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        topics = [out.price_ticks_topic, out.volume_stream_topic]
        for future in admin.create_topics([NewTopic(t, 1, 1) for t in topics]).values():
            future.result(30)
    return out


class _MeasuredLoop(ExpandLoop):
    """The worker's own loop, stopping itself after ``records`` and timing itself on its own
    thread (no measuring thread to compete for the interpreter). With ``transactions`` off,
    the same loop on an idempotent producer whose consumed offsets are committed
    asynchronously every commit interval (at least once) instead of in a transaction: what
    the transactions cost on top of everything else the worker does."""

    def __init__(
        self, settings: WorkerSettings, bootstrap: str, records: int, transactions: bool
    ) -> None:
        super().__init__(settings, bootstrap, WorkerMetrics())
        self.records, self.transactions = records, transactions
        self.start = self.end = (0.0, 0.0)
        if not transactions:
            _, config = client_configs(settings, bootstrap)
            del config["transactional.id"], config["transaction.timeout.ms"]
            self._producer = Producer({**config, "enable.idempotence": True})
            self._produce = self._producer.produce

    def _call(self, method: Callable[..., object], *args: Any) -> bool:
        if not self.transactions and method.__name__ in _NOT_TRANSACTIONAL:
            return True
        return super()._call(method, *args)

    def _commit(self) -> None:
        if self.transactions:
            super()._commit()
            return
        consumer = self._consumer
        assigned = consumer.position(consumer.assignment())
        positions = [tp for tp in assigned if tp.offset is not None and tp.offset >= 0]
        if positions:
            consumer.commit(offsets=positions, asynchronous=True)
        self._in_txn = False
        self.metrics.committed += 1

    def _process(self, message: Message) -> bool:
        if self.metrics.records == 0:
            self.start = (time.perf_counter(), time.process_time())
        done = super()._process(message)
        if self.metrics.records >= self.records:
            self.stop.set()  # the loop commits the rest of its batch and stops
        return done

    def _close(self) -> None:
        if not self.transactions:
            self._producer.flush(60)  # a commit flushes: so does the end without one
        self.end = (time.perf_counter(), time.process_time())
        super()._close()


_NOT_TRANSACTIONAL: Final = frozenset({"init_transactions", "begin_transaction"})


def worker(
    bootstrap: str,
    frames_topic: str,
    records: int,
    tag: str,
    transactions: bool,
    commit_interval: float = DEFAULT_COMMIT_INTERVAL,
) -> dict[str, Any]:
    """The worker's loop, with or without transactions, in this process on its main thread
    until it has expanded ``records``: messages/s and CPU us a message (the whole process,
    librdkafka's threads included), from its first record to its last commit."""
    settings = WorkerSettings(
        frames_topic=frames_topic,
        output=_output(tag, bootstrap),
        kafka=KafkaSettings(endpoint=bootstrap),
        group=f"bench-{tag}",
        worker_id=tag,
        commit_interval=commit_interval,
    )
    loop = _MeasuredLoop(settings, bootstrap, records, transactions)
    loop.run()
    if not (loop.start[0] and loop.end[0]):
        raise RuntimeError("the measuring hooks were not called: ExpandLoop has changed")
    elapsed, cpu = (b - a for a, b in zip(loop.start, loop.end, strict=True))
    messages = loop.metrics.messages
    return {
        "transactions": transactions,
        "commit_interval": commit_interval,
        "frames_per_s": loop.metrics.records / elapsed,
        "messages": messages,
        "messages_per_s": messages / elapsed,
        "cpu_us_per_message": cpu / messages * 1e6,
        "commits": loop.metrics.committed,
    }


def worker_processes(
    bootstrap: str, frames_topic: str, records: int, tag: str, count: int
) -> dict[str, Any]:
    """``count`` ``finazon-trio expand`` processes of one group: started on an empty frames
    topic, which gets the filled topic's records (same partitions) once the group has settled
    (so that neither the processes' start nor the rebalances of their joining are measured);
    messages/s and their CPU per message from then to the last commit."""
    stored = _read_all(bootstrap, frames_topic, records)
    topic, group, out = f"frames-{tag}", f"bench-{tag}", _output(tag, bootstrap)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, DEFAULT_FRAMES_PARTITIONS, 1)])[topic].result(30)
    processes = [_expand(bootstrap, topic, group, out) for _ in range(count)]
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    partitions = [TopicPartition(topic, p) for p in range(DEFAULT_FRAMES_PARTITIONS)]
    committed = 0
    try:
        _settled(admin, group, count)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        start, cpu_start = time.perf_counter(), sum(_cpu_seconds(p.pid) for p in processes)
        for partition, key, value, timestamp in stored:
            producer.produce(topic, value, key, partition, timestamp=timestamp)
        producer.flush(60)
        deadline = time.monotonic() + 600
        while committed < records and time.monotonic() < deadline:
            time.sleep(0.02)
            offsets = watcher.committed(partitions, timeout=10)
            committed = sum(max(tp.offset, 0) for tp in offsets)
        elapsed = time.perf_counter() - start
        cpu = sum(_cpu_seconds(p.pid) for p in processes) - cpu_start
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(60)
        watcher.close()
    messages = records * (Output().points + 1)
    return {
        "frames_per_s": records / elapsed,
        "workers": count,
        "messages_per_s": messages / elapsed,
        "cpu_us_per_message": cpu / messages * 1e6,
        "complete": committed >= records,
    }


def _expand(bootstrap: str, topic: str, group: str, out: Output) -> subprocess.Popen[bytes]:
    """A ``finazon-trio expand`` process of ``group`` over ``topic``, writing to ``out``."""
    command = [sys.executable, "-m", "finazon_trio", "--log-level", "warning", "expand"]
    command += ["--frames-topic", topic, "--group", group, "--no-dashboard"]
    command += ["--price-ticks-topic", out.price_ticks_topic]
    command += ["--volume-stream-topic", out.volume_stream_topic, "--kafka-endpoint", bootstrap]
    return subprocess.Popen(command, cwd=ROOT)


def _read_all(bootstrap: str, topic: str, records: int) -> list[tuple[Any, ...]]:
    """``(partition, key, value, timestamp)`` of the first ``records`` records of ``topic``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{time.time_ns()}"})
    consumer.assign(
        [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(DEFAULT_FRAMES_PARTITIONS)]
    )
    stored: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 120
    while len(stored) < records and time.monotonic() < deadline:
        for m in consumer.consume(1000, 1.0):
            if m.error() is None:
                stored.append((m.partition(), m.key(), m.value(), m.timestamp()[1]))
    consumer.close()
    return stored


def _settled(admin: AdminClient, group: str, members: int) -> None:
    """Wait until ``group`` is stable with ``members`` members sharing every partition."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            description: Any = admin.describe_consumer_groups([group])[group].result(10)
        except KafkaException:
            description = None
        if description is None or (
            description.state == ConsumerGroupState.STABLE and not description.members
        ):  # a broker that does not describe its groups' members (Tansu): give them time
            time.sleep(10)
            return
        assigned = sum(len(m.assignment.topic_partitions) for m in description.members)
        if (
            description.state == ConsumerGroupState.STABLE
            and len(description.members) == members
            and assigned == DEFAULT_FRAMES_PARTITIONS
            and all(m.assignment.topic_partitions for m in description.members)
        ):
            return
        time.sleep(0.2)
    raise RuntimeError(f"group {group} did not settle with {members} members")


def latency(bootstrap: str, tag: str, rate: int, seconds: float) -> dict[str, Any]:
    """Frames records produced at ``rate``/s with the current time as event time, one
    ``expand`` process, and a ``read_committed`` consumer of the volume topic: how long after
    its event time each frame's last message became visible (ms, p50/p99)."""
    frames_topic = f"frames-{tag}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(frames_topic, DEFAULT_FRAMES_PARTITIONS, 1)])[
        frames_topic
    ].result(30)
    out = _output(tag, bootstrap)
    worker_process = _expand(bootstrap, frames_topic, f"bench-{tag}", out)
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{tag}",
            "isolation.level": "read_committed",
        }
    )
    reader.assign([TopicPartition(out.volume_stream_topic, 0, OFFSET_BEGINNING)])
    delays: list[float] = []
    try:
        _settled(admin, f"bench-{tag}", 1)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        bars = _bars()
        states = BarStates()
        stop = threading.Event()

        def produce() -> None:
            n = 0
            begin = time.monotonic()
            while not stop.is_set():
                bar = next(bars)
                update = states.advance(bar)
                assert not isinstance(update, Reject)
                e = time.time_ns() // 1_000_000
                producer.produce(
                    frames_topic,
                    encode(update, e, 1000, Subscription()),
                    bar.symbol.encode(),
                    timestamp=e,
                )
                producer.poll(0)
                n += 1
                wait = begin + n / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            producer.flush(30)

        thread = threading.Thread(target=produce)
        thread.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end + 3:
            if time.monotonic() >= end:
                stop.set()
            message = reader.poll(0.05)
            if message is not None and message.error() is None:
                delays.append(time.time() * 1000 - message.timestamp()[1])
        thread.join()
    finally:
        worker_process.terminate()
        worker_process.wait(60)
        reader.close()
    quantiles = statistics.quantiles(delays, n=100) if len(delays) > 1 else [float("nan")] * 99
    return {
        "rate": rate,
        "frames": len(delays),
        "p50_ms": quantiles[49],
        "p99_ms": quantiles[98],
    }


def _bars() -> Any:
    """An endless stream of valid bars of 100 tickers, each update of the current minute."""
    from finazon_trio.transform.frames import Bar

    price = 100.0
    minute = int(time.time()) // 60 * 60
    volume = 0
    while True:
        volume += 10
        price += 0.01
        for i in range(100):
            symbol = f"T{i:03d}"
            raw = f'{{"s":"{symbol}","t":{minute},"c":{price}}}'.encode()
            yield Bar(symbol, minute, price, price + 1, price - 1, price, volume, raw)
