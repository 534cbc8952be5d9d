"""The nursery wiring: source → [recorder] → transform → [spool] → publisher, and the broker
around them.

Live mode (``metrics.mode == "live"``) adds the spool (:mod:`.spool`): a live source cannot be
made to wait, so it starts at once, and whatever Kafka cannot take yet (it has not answered at
start, or it is slow or away) waits on disk. A replay waits for Kafka instead.

Live backfill (:mod:`.transform.backfill`) adds the REST client beside the source: it lives as
long as the source and sends its answers into the source's channel, before the recorder.

Shutdown: the first SIGINT, SIGTERM or SIGHUP (the terminal closed) cancels only the source.
Its channel closes, the transform drains and closes its own, the spool hands over its backlog
and the publisher flushes what is queued, all within the flush deadline (``--flush-timeout``)
counted from the moment the source stopped; what Kafka has not taken by then goes to the
failed-messages file (or stays in the spool directory). A second signal cancels everything at
once.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from finazon_trio.errors import KafkaError
from finazon_trio.events import BackfillRequest, Outgoing, SourceEvent
from finazon_trio.observe.metrics import Metrics
from finazon_trio.observe.prometheus import serve_metrics
from finazon_trio.observe.refresh import run_dashboard, run_log
from finazon_trio.recording import RecordingHeader
from finazon_trio.settings import Settings
from finazon_trio.sink.admin import Config, ensure_topics, wait_for_kafka
from finazon_trio.sink.broker import run_embedded_broker
from finazon_trio.sink.failed import (
    FailedFile,
    failed_path,
    left_behind,
    new_run_id,
    spool_path,
)
from finazon_trio.sink.publisher import Publisher, producer_config
from finazon_trio.sink.spool import Spool
from finazon_trio.source.recorder import Recorder
from finazon_trio.source.rest import RestClient
from finazon_trio.transform.stage import Transformer, run_transform

logger = logging.getLogger(__name__)

#: Source events buffered between the source and the transform. Enough to ride out a pause
#: in the transform (a full second of 1 s updates for ~1000 tickers) without stalling the socket.
SOURCE_BUFFER = 1024
#: Batches of Kafka records buffered before the publisher: a batch per frame while the
#: transform keeps up, up to ``BATCH_EVENTS`` (16) frames when it does not, so 64 to 1024
#: frames (91 records each by default; the producer's own queue holds 200,000 records).
OUTGOING_BUFFER = 64
#: The signals that stop a run (the first: the source, then a flush; the second: everything).
#: SIGHUP is among them because closing the terminal must not cost the flush that Ctrl-C gets.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

Source = Callable[[trio.MemorySendChannel[SourceEvent]], Awaitable[None]]


@attrs.frozen
class RunResult:
    """How a run ended; ``ok`` means every message was acknowledged by Kafka."""

    produced: int
    delivered: int
    failed: int
    unflushed: int
    interrupted: bool
    #: Messages left in the spool directory (live mode), never handed to Kafka.
    backlog: int = 0
    #: Where the undelivered messages (failed and unflushed) are, if any.
    failed_path: str = ""
    spool_dir: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.failed == 0
            and self.unflushed == 0
            and self.backlog == 0
            and self.delivered == self.produced
        )


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
        backlog=pub.backlog,
        failed_path=pub.failed_path,
        spool_dir=pub.spool_dir if pub.backlog else "",
    )


async def _run_stages(
    settings: Settings,
    source: Source,
    metrics: Metrics,
    header: RecordingHeader | None,
    shutdown: _Shutdown,
) -> None:
    """Reach Kafka, then run source → [recorder] → transform → publisher; in live mode, start at
    once and put the spool before the publisher."""
    run_id = new_run_id()
    await _warn_of_leftovers(settings.kafka.spool_root)
    async with _kafka_endpoint(settings, metrics) as bootstrap:
        config = producer_config(settings.kafka, bootstrap)
        failed = FailedFile(
            settings.kafka.failed_path or failed_path(settings.kafka.spool_root, run_id)
        )
        spool = None
        if metrics.mode == "live":
            spool = Spool(
                spool_path(settings.kafka.spool_root, run_id),
                metrics.publisher,
                sync=settings.kafka.spool_sync,
            )
        else:
            await _reach_kafka(settings, config, metrics)
        rest, submit = _backfill(settings, metrics)
        transformer = Transformer(
            settings.output,
            settings.subscription,
            metrics.transform,
            tickers=metrics.tickers,
            backfill=submit,
        )
        kafka = _KafkaSide(settings, config, metrics, failed, spool, shutdown)
        try:
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
                if spool is not None:
                    spooled_send, spooled = trio.open_memory_channel[Outgoing](OUTGOING_BUFFER)
                    metrics.channels.watch("spooled", spooled_send)
                    nursery.start_soon(spool.run, outgoing, spooled_send)
                    outgoing = spooled
                nursery.start_soon(kafka.publish, outgoing)
                nursery.start_soon(run_transform, events, outgoing_send, transformer)
                source_stopped = trio.Event()
                nursery.start_soon(
                    _run_source, source, events_send, shutdown.source, source_stopped, rest
                )
                nursery.start_soon(kafka.watch_deadline, source_stopped)
                shutdown.stages_running = True
        finally:
            metrics.publisher.failed_path = str(failed.path) if failed.written else ""
        if kafka.failure is not None:
            raise kafka.failure


async def _warn_of_leftovers(spool_root: Path) -> None:
    """Say so if earlier runs left undelivered messages behind: nothing republishes them
    unless asked."""
    try:
        left = await trio.to_thread.run_sync(left_behind, spool_root)
    except OSError as exc:  # a file that went away meanwhile, say: not worth failing the run
        logger.debug("could not look for earlier runs' leftovers in %s: %s", spool_root, exc)
        return
    if left:
        logger.warning(
            "earlier runs left undelivered messages behind; publish them, in this order, with: "
            "finazon-trio republish %s",
            " ".join(str(path) for path in left),
        )


async def _reach_kafka(settings: Settings, config: Config, metrics: Metrics) -> None:
    """Wait until the cluster answers (up to ``--kafka-wait``), then create missing topics."""
    await wait_for_kafka(config, settings.kafka.wait, metrics.publisher)
    if settings.kafka.create_topics:
        await ensure_topics(
            config, _topics(settings), settings.kafka.partitions, settings.kafka.replication_factor
        )


class _KafkaSide:
    """The publisher's task (reaching Kafka first in live mode) and the flush deadline."""

    def __init__(
        self,
        settings: Settings,
        config: Config,
        metrics: Metrics,
        failed: FailedFile,
        spool: Spool | None,
        shutdown: _Shutdown,
    ) -> None:
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self.failed = failed
        self.publisher: Publisher | None = None
        self.spool = spool
        self.shutdown = shutdown
        #: Kafka could not be reached (live mode): the run ends with this error.
        self.failure: KafkaError | None = None
        self._deadline = trio.CancelScope()
        self._waiting = trio.CancelScope()

    async def publish(self, receive: trio.MemoryReceiveChannel[Outgoing]) -> None:
        """Publish what ``receive`` yields. In live mode, reach Kafka first while the source
        already runs (the spool holds its output); if Kafka cannot be reached, stop the source
        and let what it sent drain into the spool, whose directory keeps it."""
        try:
            if self.spool is not None:
                with self._waiting:
                    try:
                        await _reach_kafka(self.settings, self.config, self.metrics)
                    except KafkaError as exc:
                        self.failure = exc
                        self.shutdown.source.cancel()
                        self.spool.give_up()
                        return
                if self._waiting.cancelled_caught:
                    return
                self.spool.open()
            kafka = self.settings.kafka
            self.publisher = Publisher(
                self.config, self.metrics.publisher, kafka.flush_timeout, self.failed
            )
            self.shutdown.publisher = self.publisher
            await self.publisher.run(receive)
        finally:
            self._deadline.cancel()  # nothing left to give up on

    async def watch_deadline(self, source_stopped: trio.Event) -> None:
        """``--flush-timeout`` seconds after the source stopped, stop waiting for Kafka: the
        spool keeps its backlog on disk, the publisher purges its queue into the failed-messages
        file (see :meth:`Publisher.abandon_flush`)."""
        timeout = self.settings.kafka.flush_timeout
        with self._deadline:
            await source_stopped.wait()
            await trio.sleep(timeout)
            logger.warning(
                "Kafka has not taken everything %g s after the source stopped: giving up on "
                "the rest",
                timeout,
            )
            self._waiting.cancel()
            if self.spool is not None:
                self.spool.give_up()
            if self.publisher is not None:
                self.publisher.abandon_flush(f"the {timeout:g} s flush deadline passed")


class _Shutdown:
    """The first stop signal (:data:`STOP_SIGNALS`) stops the source (the rest drains); a second
    stops everything."""

    def __init__(self) -> None:
        self.source = trio.CancelScope()
        self.everything = trio.CancelScope()
        self.stages_running = False
        self.publisher: Publisher | None = None

    async def watch_signals(self) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stages_running and not self.source.cancel_called:
                    logger.warning(
                        "%s: stopping the source, flushing Kafka (again: exit now)", name
                    )
                    self.source.cancel()
                else:
                    if self.stages_running:
                        logger.error("%s again: exiting without flushing", name)
                    else:  # e.g. while waiting for Kafka at start
                        logger.warning("%s: stopping; nothing was published yet", name)
                    if self.publisher is not None:
                        self.publisher.abandon_flush(f"{name} again cut the flush short")
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
    source: Source,
    send: trio.MemorySendChannel[SourceEvent],
    scope: trio.CancelScope,
    stopped: trio.Event,
    rest: RestClient | None = None,
) -> None:
    # Closing here as well as in the source guarantees the downstream cascade even when the
    # source is cancelled before it ever entered its own ``async with send``. The REST client
    # (live backfill) sends its answers into the same channel and lives as long as the source.
    try:
        async with send:
            with scope:
                if rest is None:
                    await source(send)
                    return
                async with trio.open_nursery() as nursery:
                    await nursery.start(rest.run, send.clone())
                    await source(send)
                    nursery.cancel_scope.cancel()
    finally:
        stopped.set()


def backfill_active(settings: Settings) -> bool:
    """Whether gaps are detected and backfilled: asked for, with 1-minute bars."""
    return settings.backfill.enabled and settings.subscription.aggregation.strip() == "1m"


def _backfill(
    settings: Settings, metrics: Metrics
) -> tuple[RestClient | None, Callable[[BackfillRequest], None] | None]:
    """Live: the REST client, and its ``submit`` for the transform. Replay: no client, and a
    ``submit`` that asks nothing (the answers are in the recording)."""
    if not backfill_active(settings):
        return None, None
    if metrics.mode != "live":
        return None, _recorded
    rest = RestClient(
        settings.backfill, settings.live.api_key, settings.subscription, metrics.source
    )
    return rest, rest.submit


def _recorded(_request: BackfillRequest) -> None:
    """A replay's backfill: its REST answer comes from the recording."""


def _topics(settings: Settings) -> list[str]:
    out = settings.output
    topics = [out.price_ticks_topic, out.volume_stream_topic]
    if out.frames_topic is not None:  # the ingest role
        topics = [out.frames_topic]
    if out.dead_letter_topic:
        topics.append(out.dead_letter_topic)
    if backfill_active(settings):
        topics.append(out.gaps_topic)
    return topics


def _secrets(settings: Settings) -> tuple[str, ...]:
    return (settings.live.api_key,) if settings.live.api_key else ()
