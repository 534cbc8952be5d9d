"""One measurement per process: ``python -m benchmarks.measure KIND '{json arguments}'``.

:mod:`benchmarks.bench` runs each measurement in a fresh interpreter, so that none inherits the
heap, the garbage collector's state or the peak memory of another, and reads the one JSON
object it prints on stdout. Every figure is wall-clock time of the measured part only:
preparation (reading the recording, encoding the limit's messages, reaching Kafka) comes first.
"""

from __future__ import annotations

import functools
import logging
import shutil
import sys
import time
import unittest.mock
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import trio
from confluent_kafka import Producer

from finazon_trio import pipeline
from finazon_trio.events import Message, Outgoing, Received
from finazon_trio.observe.metrics import Metrics, TickerBoard, TransformMetrics
from finazon_trio.pipeline import run_pipeline
from finazon_trio.recording import iter_entries, read_header
from finazon_trio.settings import KafkaSettings, Output, Settings
from finazon_trio.sink.publisher import producer_config
from finazon_trio.sink.spool import WRITE_BATCH, SegmentWriter, read_back
from finazon_trio.source.replay import replay_source
from finazon_trio.transform.stage import Transformer

Result = dict[str, Any]


def received_frames(recording: Path) -> list[tuple[int, str]]:
    """``(t_ns, text)`` of every frame the recording received."""
    return [(e.t_ns, e.text) for e in iter_entries(recording) if isinstance(e, Received)]


def frame_messages(recording: Path, out: Output) -> list[tuple[int, list[Message]]]:
    """``(t_ns, messages)`` of every frame the recording received, as the transform makes them."""
    transformer = Transformer(out, read_header(recording).subscription(), TransformMetrics())
    return [(t_ns, transformer.on_frame(t_ns, text)) for t_ns, text in received_frames(recording)]


def output(topics: list[str]) -> Output:
    return Output(price_ticks_topic=topics[0], volume_stream_topic=topics[1])


def kafka_settings(bootstrap: str, config: list[list[str]]) -> KafkaSettings:
    return KafkaSettings(endpoint=bootstrap, config=tuple((k, v) for k, v in config))


def transform(recording: str) -> Result:
    """Parse, validate, interpolate and encode every frame, as the transform stage does."""
    path = Path(recording)
    frames = received_frames(path)
    transformer = Transformer(
        Output(), read_header(path).subscription(), TransformMetrics(), tickers=TickerBoard()
    )
    on_frame = transformer.on_frame
    messages = 0
    start, cpu = time.perf_counter(), time.process_time()
    for t_ns, text in frames:
        messages += len(on_frame(t_ns, text))
    return _rates(len(frames), messages, start, cpu)


def spool(recording: str, directory: str, sync: bool = False) -> Result:
    """What the spool adds to each message of a live backlog: the transform's batches (one a
    frame) written to segment files and read back by the spool's own writer and reader, in
    writes of :data:`~finazon_trio.sink.spool.WRITE_BATCH` messages; no Kafka, no trio. With
    ``sync``, as ``--spool-sync`` writes them: each write fsynced (``fsyncs`` counts them)."""
    made = frame_messages(Path(recording), Output())
    batches = [Outgoing(t_ns, messages) for t_ns, messages in made if messages]
    per_write = max(1, WRITE_BATCH // len(batches[0].messages))  # frames per write
    writer = SegmentWriter(Path(directory) / "spool", sync=sync)
    written: dict[Path, int] = {}
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(batches), per_write):
        segment, size, _ = writer.append(batches[i : i + per_write])
        written[segment] = size
    writer.close()
    messages = 0
    for segment, end in written.items():
        offset = 0
        while offset < end:
            chunk, offset = read_back(segment, offset, end)
            messages += sum(len(outgoing.messages) for outgoing, _ in chunk)
    result = _rates(len(made), messages, start, cpu)
    result["fsyncs"] = -(-len(batches) // per_write) if sync else 0
    shutil.rmtree(writer.directory)
    return result


def limit(recording: str, bootstrap: str, topics: list[str], config: list[list[str]]) -> Result:
    """The Kafka client alone: the replay's messages, encoded beforehand, produced flat out by a
    bare producer with the project's settings, then flushed."""
    made = frame_messages(Path(recording), output(topics))
    messages = [message for _, frame in made for message in frame]
    producer = Producer(producer_config(kafka_settings(bootstrap, config), bootstrap))
    for topic in topics:  # metadata and connections first, as the pipeline has them at start
        producer.list_topics(topic, timeout=30)
    produce: Callable[..., None] = producer.produce
    poll = producer.poll
    start, cpu = time.perf_counter(), time.process_time()
    for topic, key, value, timestamp, headers in messages:
        while True:
            try:
                # Positional arguments: keywords cost 0.4 us more per call (1.2 vs 0.8 us
                # without a broker), and the limit is what the client can do at best.
                produce(topic, value, key, -1, None, None, timestamp, headers)
                break
            except BufferError:
                poll(0.005)
    unflushed = producer.flush(60)
    return {**_rates(len(made), len(messages), start, cpu), "unflushed": unflushed}


def replay(recording: str, bootstrap: str, topics: list[str], config: list[list[str]]) -> Result:
    """``finazon-trio replay --speed max``, in this process, from the first frame to the last
    acknowledgement."""
    path = Path(recording)
    settings = Settings(
        subscription=read_header(path).subscription(),
        output=output(topics),
        kafka=kafka_settings(bootstrap, config),
        dashboard=False,
    )
    metrics = Metrics(mode="replay", origin=recording)
    started: list[float] = []

    async def source(send: trio.MemorySendChannel[Any]) -> None:
        started[:] = time.perf_counter(), time.process_time()  # Kafka reached, topics there
        await replay_source(path, send, metrics.source)

    result = trio.run(
        functools.partial(run_pipeline, settings, source, metrics, handle_signals=False)
    )
    pub = metrics.publisher
    return {
        **_rates(metrics.source.frames, result.delivered, *started),
        "ok": result.ok,
        "failed": result.failed,
        "backpressure_waits": pub.backpressure_waits,
        "bars_transformed": metrics.transform.bars,
    }


def replay_precomputed(
    recording: str, bootstrap: str, topics: list[str], config: list[list[str]]
) -> Result:
    """:func:`replay` with the transform's output computed beforehand: the pipeline's cost
    without the transform's, so that the gap between replay and limit can be split in two."""
    ready = (messages for _, messages in frame_messages(Path(recording), output(topics)))

    class Precomputed(Transformer):
        def on_frame(self, t_ns: int, text: str, conn: int = 0) -> list[Message]:
            return next(ready)

    # Only this measurement's own process sees the substitute, and only inside this block.
    with unittest.mock.patch.object(pipeline, "Transformer", Precomputed):
        return replay(recording, bootstrap, topics, config)


def _rates(frames: int, messages: int, start: float, cpu_start: float) -> Result:
    """Throughput since ``start`` (``time.perf_counter``), and the CPU time this process (every
    thread, librdkafka's included) spent per message since ``cpu_start``: a figure that
    other work on the machine disturbs less than the rates."""
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return {
        "frames": frames,
        "messages": messages,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
        "messages_per_s": messages / seconds,
        "cpu_us_per_message": cpu / max(messages, 1) * 1e6,
    }


def _live(**kwargs: Any) -> Result:
    from .live_client import live  # its imports (trio-websocket) only where needed

    return live(**kwargs)


def _scale_out(name: str) -> Callable[..., Result]:
    def run(**kwargs: Any) -> Result:
        from . import scale_out  # the worker's imports only where needed

        result: Result = getattr(scale_out, name)(**kwargs)
        return result

    return run


KINDS: dict[str, Callable[..., Result]] = {
    "worker": _scale_out("worker"),
    "worker_processes": _scale_out("worker_processes"),
    "latency": _scale_out("latency"),
    "transform": transform,
    "spool": spool,
    "limit": limit,
    "replay": replay,
    "replay_precomputed": replay_precomputed,
    "live": _live,
}


def main(argv: list[str]) -> int:
    kind, arguments = argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = KINDS[kind](**orjson.loads(arguments))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
