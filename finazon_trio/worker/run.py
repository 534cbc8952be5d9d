"""The worker role's trio side: the loop on its own thread, and around it the signals, the
dashboard or log line, and ``--metrics-port``.

SIGINT/SIGTERM set the loop's ``stop``: it commits (or aborts) the open transaction and closes
its consumer, leaving the group; the worker then returns. Cancelling :func:`run_worker` sets
``stop`` too but does not wait: the loop's thread is abandoned and finishes on its own (a
transaction it had not committed stays uncommitted, which is safe). The watchdog uses that when
a transactional call is stuck inside librdkafka (:data:`~.consumer.STUCK_AFTER`). SIGUSR1
dumps every thread's stack to stderr.
"""

from __future__ import annotations

import faulthandler
import functools
import logging
import signal
import time

import trio
from rich.console import Console
from rich.live import Live

from finazon_trio.errors import KafkaError
from finazon_trio.observe.prometheus import serve_metrics
from finazon_trio.observe.stats import RateWindow
from finazon_trio.sink.admin import (
    ADMIN_TIMEOUT,
    Config,
    admin_client,
    ensure_topics,
    wait_for_kafka,
)
from finazon_trio.worker.clients import client_configs
from finazon_trio.worker.config import WorkerSettings
from finazon_trio.worker.consumer import STUCK_AFTER, ExpandLoop
from finazon_trio.worker.display import families, log_line, rate_counters, render
from finazon_trio.worker.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

LOG_INTERVAL = 5.0
#: The cluster id of the embedded broker (Tansu), and what it does not guarantee (measured:
#: docs/scaling-out.md, "On the embedded broker").
TANSU_CLUSTER_ID = "tansu_cluster"
EMBEDDED_BROKER_LIMITS = (
    "Kafka at %s is the embedded broker (Tansu): not exactly once when a worker is replaced "
    "while frozen (it does not abort the fenced worker's open transaction), and it keeps "
    "nothing across a restart; use Apache Kafka for exactly once"
)
REFRESH_PER_SECOND = 4.0


async def run_worker(settings: WorkerSettings, bootstrap: str, metrics: WorkerMetrics) -> None:
    """Run one expansion worker until SIGINT/SIGTERM (or cancellation). Raises
    :class:`~finazon_trio.errors.KafkaError` (fenced, fatal) in an exception group."""
    metrics.group, metrics.worker_id, metrics.endpoint = (
        settings.group,
        settings.worker_id,
        bootstrap,
    )
    _, producer_config = client_configs(settings, bootstrap)
    plain = {k: v for k, v in producer_config.items() if k != "transactional.id"}
    await wait_for_kafka(plain, settings.kafka.wait)
    if settings.kafka.create_topics:
        out = settings.output
        topics = [out.price_ticks_topic, out.volume_stream_topic]
        if out.dead_letter_topic:
            topics.append(out.dead_letter_topic)
        kafka = settings.kafka
        await ensure_topics(plain, topics, kafka.partitions, kafka.replication_factor)
    if await trio.to_thread.run_sync(_is_embedded_broker, plain, abandon_on_cancel=True):
        logger.warning(EMBEDDED_BROKER_LIMITS, bootstrap)
    loop = ExpandLoop(settings, bootstrap, metrics)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: where is it stuck?
    logger.info(
        "worker %s joins group %s on %s (transactional.id %s%s)",
        settings.worker_id,
        settings.group,
        settings.frames_topic,
        settings.transactional_id,
        ", static member" if settings.stable_id else "",
    )
    async with trio.open_nursery() as nursery:
        if settings.metrics_port is not None:
            await nursery.start(
                functools.partial(
                    serve_metrics, metrics, settings.metrics_port, families_of=families
                )
            )
        nursery.start_soon(_show_dashboard if settings.dashboard else _log, metrics)
        nursery.start_soon(_watch_signals, loop)
        nursery.start_soon(_stop_when_cancelled, loop)
        nursery.start_soon(_watchdog, loop)
        try:
            # Abandoned only when the watchdog gives up on a call stuck inside librdkafka.
            await trio.to_thread.run_sync(loop.run, abandon_on_cancel=True)
        finally:
            loop.stop.set()
            nursery.cancel_scope.cancel()
    logger.info("worker %s stopped: %s", settings.worker_id, log_line(metrics.snapshot(), {}))


def _is_embedded_broker(config: Config) -> bool:
    cluster_id = admin_client(config).list_topics(timeout=ADMIN_TIMEOUT).cluster_id
    return cluster_id == TANSU_CLUSTER_ID


async def _watchdog(loop: ExpandLoop) -> None:
    while True:
        await trio.sleep(1)
        call = loop.stuck()
        if call is not None:
            raise KafkaError(
                f"librdkafka's {call} has not returned for {STUCK_AFTER:g} s (it can wait for "
                "a group coordinator that went away with a restarted broker): restart the "
                "worker; its open transaction is never committed"
            )


async def _stop_when_cancelled(loop: ExpandLoop) -> None:
    try:
        await trio.sleep_forever()
    finally:
        loop.stop.set()


async def _watch_signals(loop: ExpandLoop) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if loop.stop.is_set():
                logger.warning("%s again: still finishing the open transaction", name)
            else:
                logger.warning("%s: committing the open transaction and leaving the group", name)
            loop.stop.set()


async def _log(metrics: WorkerMetrics) -> None:
    window = RateWindow()
    while True:
        await trio.sleep(LOG_INTERVAL)
        snap = metrics.snapshot()
        logger.info("%s", log_line(snap, window.update(time.time(), rate_counters(snap))))


async def _show_dashboard(metrics: WorkerMetrics) -> None:
    console = Console(stderr=True)
    window = RateWindow()
    with Live(console=console, auto_refresh=False, redirect_stdout=False) as live:
        while True:
            now = time.time()
            snap = metrics.snapshot()
            frame = render(snap, window.update(now, rate_counters(snap)), now)
            await trio.to_thread.run_sync(functools.partial(live.update, frame, refresh=True))
            await trio.sleep(1 / REFRESH_PER_SECOND)
