"""The scale-out measurements (README, "Scaling out"): the expansion worker's cost per message
with and without transactions, one against two worker processes, and the latency from a
frames record to its ticks visible to a ``read_committed`` consumer.

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
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from finazon_trio.events import Received
from finazon_trio.observe.metrics import TransformMetrics
from finazon_trio.recording import iter_entries, read_header
from finazon_trio.settings import KafkaSettings, Output, Subscription
from finazon_trio.transform.expand import expand
from finazon_trio.transform.frames import Reject
from finazon_trio.transform.record import decode, encode
from finazon_trio.transform.stage import Transformer
from finazon_trio.transform.state import BarStates
from finazon_trio.worker.config import DEFAULT_FRAMES_PARTITIONS, WorkerSettings
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


def worker(bootstrap: str, frames_topic: str, records: int, tag: str) -> dict[str, Any]:
    """One in-process worker (transactions, commit every 0.1 s) until it has expanded
    ``records``: messages/s and CPU us a message (this process, librdkafka's threads too)."""
    settings = WorkerSettings(
        frames_topic=frames_topic,
        output=_output(tag, bootstrap),
        kafka=KafkaSettings(endpoint=bootstrap),
        group=f"bench-{tag}",
        worker_id=tag,
    )
    metrics = WorkerMetrics()
    loop = ExpandLoop(settings, bootstrap, metrics)
    thread = threading.Thread(target=loop.run)
    thread.start()
    while metrics.records == 0:
        time.sleep(0.001)
    start, cpu = time.perf_counter(), time.process_time()
    first = metrics.messages
    while metrics.records < records and thread.is_alive():
        time.sleep(0.001)
    loop.stop.set()
    thread.join()  # the last commit included
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    messages = metrics.messages - first
    return {
        "frames_per_s": messages / (Output().points + 1) / elapsed,
        "messages": messages,
        "messages_per_s": messages / elapsed,
        "cpu_us_per_message": cpu / messages * 1e6,
        "transactions": metrics.committed,
    }


def worker_plain(bootstrap: str, frames_topic: str, records: int, tag: str) -> dict[str, Any]:
    """The same consume → decode → expand → produce without transactions (idempotent producer,
    auto-committed offsets), flush included: what the transactions cost on top."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{tag}",
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "compression.type": "lz4",
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 200_000,
        }
    )
    output, subscription = _output(tag, bootstrap), Subscription()
    consumer.subscribe([frames_topic])
    done = messages = 0
    start = cpu = 0.0
    while done < records:
        batch = consumer.consume(500, 0.05)
        if batch and not done:
            start, cpu = time.perf_counter(), time.process_time()
        for message in batch:
            decoded = decode(message.value())
            assert not isinstance(decoded, Reject)
            update, e, interval, _origin = decoded
            for topic, key, value, ts, headers in expand(update, e, interval, output, subscription):
                while True:
                    try:
                        producer.produce(topic, value, key, -1, None, None, ts, headers)
                        break
                    except BufferError:
                        producer.poll(0.05)
                messages += 1
            done += 1
        producer.poll(0)
    producer.flush(60)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    consumer.close()
    return {
        "frames_per_s": done / elapsed,
        "messages": messages,
        "messages_per_s": messages / elapsed,
        "cpu_us_per_message": cpu / messages * 1e6,
    }


def worker_processes(
    bootstrap: str, frames_topic: str, records: int, tag: str, count: int
) -> dict[str, Any]:
    """``count`` ``finazon-trio expand`` processes of one group over the filled frames topic:
    messages/s from the first committed offset to the last, and their CPU per message."""
    group = f"bench-{tag}"
    out = _output(tag)
    command = [sys.executable, "-m", "finazon_trio", "--log-level", "warning", "expand"]
    command += ["--frames-topic", frames_topic, "--group", group, "--no-dashboard"]
    command += ["--price-ticks-topic", out.price_ticks_topic]
    command += ["--volume-stream-topic", out.volume_stream_topic, "--kafka-endpoint", bootstrap]
    processes = [subprocess.Popen(command, cwd=ROOT) for _ in range(count)]
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    partitions = [TopicPartition(frames_topic, p) for p in range(DEFAULT_FRAMES_PARTITIONS)]
    try:
        start = 0.0
        cpu_start = 0.0
        committed = 0
        deadline = time.monotonic() + 600
        while committed < records and time.monotonic() < deadline:
            time.sleep(0.05)
            offsets = watcher.committed(partitions, timeout=10)
            committed = sum(max(tp.offset, 0) for tp in offsets)
            if committed and not start:
                start = time.perf_counter()
                cpu_start = sum(_cpu_seconds(p.pid) for p in processes)
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


def latency(bootstrap: str, tag: str, rate: int, seconds: float) -> dict[str, Any]:
    """Frames records produced at ``rate``/s with the current time as event time, one
    ``expand`` process, and a ``read_committed`` consumer of the volume topic: how long after
    its event time each frame's last message became visible (ms, p50/p99)."""
    frames_topic = f"frames-{tag}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(frames_topic, DEFAULT_FRAMES_PARTITIONS, 1)])[
        frames_topic
    ].result(30)
    out = _output(tag)
    command = [sys.executable, "-m", "finazon_trio", "--log-level", "warning", "expand"]
    command += ["--frames-topic", frames_topic, "--group", f"bench-{tag}", "--no-dashboard"]
    command += ["--price-ticks-topic", out.price_ticks_topic]
    command += ["--volume-stream-topic", out.volume_stream_topic, "--kafka-endpoint", bootstrap]
    worker_process = subprocess.Popen(command, cwd=ROOT)
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{tag}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    delays: list[float] = []
    try:
        time.sleep(8)  # the worker joins its group and creates the output topics
        reader.subscribe([out.volume_stream_topic])
        end = time.monotonic() + 5
        while time.monotonic() < end:  # the reader's own assignment
            reader.poll(0.1)
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
