"""The nursery wiring: source → [recorder] → transform → publisher, and the broker around them.

Shutdown: the first SIGINT/SIGTERM cancels only the source. Its channel closes, the transform
drains and closes its own, and the publisher flushes what is queued within the flush deadline.
A second signal cancels everything at once.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import attrs
import trio

from .broker import run_embedded_broker
from .dashboard import run_dashboard, run_log
from .events import Outgoing, SourceEvent
from .metrics import Metrics
from .prometheus import serve_metrics
from .publisher import Publisher, ensure_topics, producer_config, wait_for_kafka
from .recording import Recorder, RecordingHeader
from .settings import Settings
from .transform import Transformer, run_transform

logger = logging.getLogger(__name__)

#: Source events buffered between the source and the transform. Enough to ride out a pause
#: in the transform (a full second of 1 s updates for ~1000 tickers) without stalling the socket.
SOURCE_BUFFER = 1024
#: Frames' worth of Kafka records (91 each by default) buffered before the publisher.
OUTGOING_BUFFER = 256

Source = Callable[[trio.MemorySendChannel[SourceEvent]], Awaitable[None]]


@attrs.frozen
class RunResult:
    """How a run ended; ``ok`` means every produced message was acknowledged."""

    produced: int
    delivered: int
    failed: int
    unflushed: int
    interrupted: bool

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.unflushed == 0 and self.delivered == self.produced


async def run_pipeline(
    settings: Settings,
    source: Source,
    metrics: Metrics,
    *,
    header: RecordingHeader | None = None,
    handle_signals: bool = True,
) -> RunResult:
    """Run one pipeline to its end: the source finished, or a signal asked it to stop.

    The dashboard (or the progress log), the metrics endpoint and the signal watcher run
    around the pipeline, from before Kafka is reached until the last message is flushed.
    """
    shutdown = _Shutdown()
    async with trio.open_nursery() as helpers:
        if settings.metrics_port is not None:
            await helpers.start(serve_metrics, metrics, settings.metrics_port)
        helpers.start_soon(run_dashboard if settings.dashboard else run_log, metrics)
        if handle_signals:
            helpers.start_soon(shutdown.watch_signals)
        with shutdown.everything:
            await _run_stages(settings, source, metrics, header, shutdown)
        helpers.cancel_scope.cancel()
    pub = metrics.publisher
    return RunResult(
        produced=pub.produced,
        delivered=pub.delivered,
        failed=pub.failed,
        # Exact once the publisher has ended: whatever was neither delivered nor failed.
        unflushed=pub.produced - pub.delivered - pub.failed,
        interrupted=shutdown.source.cancel_called,
    )


async def _run_stages(
    settings: Settings,
    source: Source,
    metrics: Metrics,
    header: RecordingHeader | None,
    shutdown: _Shutdown,
) -> None:
    """Reach Kafka, then run source → [recorder] → transform → publisher."""
    async with _kafka_endpoint(settings, metrics) as bootstrap:
        config = producer_config(settings.kafka, bootstrap)
        await wait_for_kafka(config, settings.kafka.wait)
        if settings.kafka.create_topics:
            await ensure_topics(
                config,
                _topics(settings),
                settings.kafka.partitions,
                settings.kafka.replication_factor,
            )
        publisher = Publisher(config, metrics.publisher, settings.kafka.flush_timeout)
        shutdown.publisher = publisher
        transformer = Transformer(
            settings.output, settings.subscription, metrics.transform, tickers=metrics.tickers
        )
        async with trio.open_nursery() as nursery:
            events_send, events = trio.open_memory_channel[SourceEvent](SOURCE_BUFFER)
            outgoing_send, outgoing = trio.open_memory_channel[Outgoing](OUTGOING_BUFFER)
            metrics.channels.watch("source", events_send)
            metrics.channels.watch("outgoing", outgoing_send)
            if settings.record is not None:
                assert header is not None, "recording needs a header"
                recorded_send, recorded = trio.open_memory_channel[SourceEvent](SOURCE_BUFFER)
                metrics.channels.watch("recorded", recorded_send)
                recorder = Recorder(settings.record, header, secrets=_secrets(settings))
                await nursery.start(recorder.run, events, recorded_send)
                events = recorded
            nursery.start_soon(publisher.run, outgoing)
            nursery.start_soon(run_transform, events, outgoing_send, transformer)
            nursery.start_soon(_run_source, source, events_send, shutdown.source)
            shutdown.stages_running = True


class _Shutdown:
    """The first SIGINT/SIGTERM stops the source (the rest drains); a second stops everything."""

    def __init__(self) -> None:
        self.source = trio.CancelScope()
        self.everything = trio.CancelScope()
        self.stages_running = False
        self.publisher: Publisher | None = None

    async def watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stages_running and not self.source.cancel_called:
                    logger.warning(
                        "%s: stopping the source, flushing Kafka (again: exit now)", name
                    )
                    self.source.cancel()
                else:
                    logger.error("%s again: exiting without flushing", name)
                    if self.publisher is not None:
                        self.publisher.abandon_flush()
                    self.everything.cancel()
                    return


@asynccontextmanager
async def _kafka_endpoint(settings: Settings, metrics: Metrics) -> AsyncIterator[str]:
    """The configured cluster, or an embedded broker that lives as long as the block."""
    if settings.kafka.endpoint is not None:
        metrics.publisher.endpoint = settings.kafka.endpoint
        yield settings.kafka.endpoint
        return
    async with trio.open_nursery() as nursery:
        bootstrap: str = await nursery.start(run_embedded_broker)
        metrics.publisher.endpoint = bootstrap
        metrics.publisher.embedded = True
        logger.warning(
            "No Kafka endpoint given (--kafka-endpoint or KAFKA_ENDPOINT): started the embedded "
            "in-memory broker at %s; its messages vanish when this process exits.",
            bootstrap,
        )
        yield bootstrap
        nursery.cancel_scope.cancel()


async def _run_source(
    source: Source, send: trio.MemorySendChannel[SourceEvent], scope: trio.CancelScope
) -> None:
    # Closing here as well as in the source guarantees the downstream cascade even when the
    # source is cancelled before it ever entered its own ``async with send``.
    async with send:
        with scope:
            await source(send)


def _topics(settings: Settings) -> list[str]:
    out = settings.output
    topics = [out.price_ticks_topic, out.volume_stream_topic]
    if out.dead_letter_topic:
        topics.append(out.dead_letter_topic)
    return topics


def _secrets(settings: Settings) -> tuple[str, ...]:
    return (settings.live.api_key,) if settings.live.api_key else ()
