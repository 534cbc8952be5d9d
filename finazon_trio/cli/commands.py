"""What each command does, given its parsed arguments; each returns the exit status."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio
from rich.console import Console

from finazon_trio import schemas
from finazon_trio.errors import ConfigurationError
from finazon_trio.observe.metrics import Metrics, PublisherMetrics
from finazon_trio.observe.summary import summary_table
from finazon_trio.observe.tail import TailOptions
from finazon_trio.observe.tail import tail as tail_topics
from finazon_trio.pipeline import STOP_SIGNALS, RunResult, Source, run_pipeline
from finazon_trio.recording import (
    RecordingHeader,
    header_from_settings,
    read_header,
    replay_settings,
)
from finazon_trio.server.app import serve as serve_clients
from finazon_trio.server.config import ServerConfig
from finazon_trio.server.synthetic import generate_recording
from finazon_trio.settings import (
    BackfillSettings,
    KafkaSettings,
    LiveSettings,
    Output,
    Settings,
    Subscription,
)
from finazon_trio.sink.broker import run_embedded_broker
from finazon_trio.sink.failed import FailedFile, failed_path, new_run_id
from finazon_trio.sink.republish import republish as republish_files
from finazon_trio.source.live import live_source
from finazon_trio.source.replay import replay_source
from finazon_trio.worker.config import DEFAULT_FRAMES_PARTITIONS, WorkerSettings, default_worker_id
from finazon_trio.worker.metrics import WorkerMetrics
from finazon_trio.worker.run import run_worker

logger = logging.getLogger("finazon_trio")

EXIT_FAILED = 1


def _settings(
    args: argparse.Namespace,
    subscription: Subscription,
    *,
    live: LiveSettings | None = None,
    backfill: BackfillSettings | None = None,
    record: Path | None = None,
    speed: float | None = None,
) -> Settings:
    try:
        return Settings(
            subscription=subscription,
            output=Output(
                price_ticks_topic=args.price_ticks_topic,
                volume_stream_topic=args.volume_stream_topic,
                dead_letter_topic=args.dead_letter_topic,
                points=args.points,
                path=args.path,
                volume_format=args.volume_format,
                frames_topic=getattr(args, "frames_topic", None),
                gaps_topic=args.gaps_topic,
            ),
            kafka=_kafka(args),
            live=live or LiveSettings(),
            backfill=backfill or BackfillSettings(),
            record=record,
            dashboard=args.dashboard if args.dashboard is not None else sys.stderr.isatty(),
            metrics_port=args.metrics_port,
            speed=speed,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc


def _kafka(args: argparse.Namespace) -> KafkaSettings:
    try:
        return KafkaSettings(
            endpoint=args.kafka_endpoint or None,
            config=tuple(_key_value(item) for item in args.kafka_config),
            create_topics=args.create_topics,
            partitions=_partitions(args),
            replication_factor=args.replication_factor,
            flush_timeout=args.flush_timeout,
            wait=args.kafka_wait,
            spool_dir=args.spool_dir,
            failed_path=args.failed_path,
            spool_sync=args.spool_sync,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc


def _partitions(args: argparse.Namespace) -> int:
    if args.partitions is not None:
        return int(args.partitions)
    # The ingest role's frames topic: room for the workers to come (README, "Scaling out").
    frames = getattr(args, "frames_topic", None) and args.handler is not expand
    return DEFAULT_FRAMES_PARTITIONS if frames else KafkaSettings().partitions


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigurationError(f"--kafka-config wants KEY=VALUE, not {item!r}")
    return key.strip(), value


def live(args: argparse.Namespace) -> int:
    tickers = tuple(t.strip() for t in args.tickers.split(",") if t.strip())
    if not tickers:
        raise ConfigurationError("--tickers names no ticker")
    api_key = os.environ.get("FINAZON_API_KEY", "").strip()
    if not api_key:
        raise ConfigurationError(
            "FINAZON_API_KEY is not set: export your Finazon API key "
            "(or run `finazon-trio serve` and point --url at it with any key)"
        )
    try:
        subscription = Subscription(
            dataset=args.dataset,
            tickers=tickers,
            frequency=args.frequency,
            aggregation=args.aggregation,
        )
        live_settings = LiveSettings(
            url=args.url,
            api_key=api_key,
            heartbeat_interval=args.heartbeat_interval,
            stale_timeout=args.stale_timeout,
            max_backoff=args.max_backoff,
            max_retries=args.max_retries,
            connections=args.connections,
        )
        backfill = BackfillSettings(
            enabled=args.backfill,
            rest_url=args.rest_url,
            timeout=args.backfill_timeout,
            calls_per_minute=args.rest_calls_per_minute,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    settings = _settings(
        args, subscription, live=live_settings, backfill=backfill, record=args.record
    )
    metrics = Metrics(mode="live")
    source: Source = functools.partial(live_source, settings, metrics=metrics.source)
    header = header_from_settings(settings, settings.live.url)
    return _finish(trio.run(_run, settings, source, metrics, header), metrics)


def replay(args: argparse.Namespace) -> int:
    speed = None if args.speed == "max" else _positive_float(args.speed, "--speed")
    header = read_header(args.recording)
    settings = replay_settings(_settings(args, header.subscription(), speed=speed), header)
    metrics = Metrics(mode="replay", origin=str(args.recording))
    source: Source = functools.partial(
        replay_source, args.recording, metrics=metrics.source, speed=speed
    )
    return _finish(trio.run(_run, settings, source, metrics, None), metrics)


async def _run(
    settings: Settings, source: Source, metrics: Metrics, header: RecordingHeader | None
) -> RunResult:
    return await run_pipeline(settings, source, metrics, header=header)


def _finish(result: RunResult, metrics: Metrics) -> int:
    Console(stderr=True).print(summary_table(metrics.snapshot()))
    if result.unflushed:
        logger.error("%d messages were not acknowledged by Kafka before exit", result.unflushed)
    if result.failed:
        logger.error("%d messages failed delivery", result.failed)
    if result.backlog:
        logger.error("%d messages were never handed to Kafka", result.backlog)
    kept = [path for path in (result.failed_path, result.spool_dir) if path]
    if kept:
        logger.error(
            "the undelivered messages are kept in %s; publish them, in this order, with: "
            "finazon-trio republish %s",
            " and ".join(kept),
            " ".join(kept),
        )
    return 0 if result.ok else EXIT_FAILED


def expand(args: argparse.Namespace) -> int:
    """An expansion worker (README, "Scaling out"); 0 after SIGINT/SIGTERM."""
    kafka = _kafka(args)
    if kafka.endpoint is None:
        raise ConfigurationError(
            "expand needs the cluster the ingest role publishes to: --kafka-endpoint or "
            "KAFKA_ENDPOINT (an embedded broker of its own would hold no frames)"
        )
    try:
        settings = WorkerSettings(
            frames_topic=args.frames_topic,
            output=attrs.evolve(_settings(args, Subscription()).output, frames_topic=None),
            kafka=kafka,
            group=args.group,
            worker_id=args.worker_id or default_worker_id(),
            stable_id=args.worker_id is not None,
            commit_interval=args.commit_interval,
            dashboard=args.dashboard if args.dashboard is not None else sys.stderr.isatty(),
            metrics_port=args.metrics_port,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    trio.run(run_worker, settings, kafka.endpoint, WorkerMetrics())
    return 0


def republish(args: argparse.Namespace) -> int:
    kafka = _kafka(args)
    failed = FailedFile(args.failed_path or failed_path(kafka.spool_root, new_run_id()))
    metrics = PublisherMetrics()
    result = trio.run(republish_files, args.paths, kafka, failed, metrics)
    logger.info(
        "republished %s: %d delivered, %d failed, %d not acknowledged, %d lines skipped",
        " ".join(map(str, args.paths)),
        result.delivered,
        result.failed,
        result.unflushed,
        len(result.corrupt),
    )
    if failed.written:
        logger.error(
            "%d messages were not delivered again; they are kept in %s", failed.written, failed.path
        )
    return 0 if result.ok else EXIT_FAILED


def serve(args: argparse.Namespace) -> int:
    config = ServerConfig(
        host=args.host,
        port=args.port,
        recording=args.recording,
        api_keys=tuple(args.api_key),
        speed=args.speed,
        loop=args.loop,
        seed=args.seed,
        drop_every=args.drop_every,
        stall_after=args.stall_after,
        garbage_rate=args.garbage_rate,
        reject_auth=args.reject_auth,
        auth_failure=args.auth_failure,
        unknown_tickers=tuple(args.unknown_ticker),
        frame_style=args.frame_style,
        drop_for=args.drop_for,
        rest_port=args.rest_port,
        rest_rate_limit=args.rest_rate_limit,
        rest_failure_rate=args.rest_failure_rate,
        rest_delay=args.rest_delay,
        rest_garbage_rate=args.rest_garbage_rate,
        rest_reject_auth=args.rest_reject_auth,
    )
    trio.run(_until_interrupted, functools.partial(serve_clients, config))
    return 0


def broker(args: argparse.Namespace) -> int:
    trio.run(_until_interrupted, functools.partial(run_embedded_broker, args.port))
    return 0


async def _until_interrupted(service: Callable[..., Awaitable[object]]) -> None:
    async with trio.open_nursery() as nursery:
        started = await nursery.start(service)
        logger.info("listening on %s; Ctrl-C stops", started)
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


def tail(args: argparse.Namespace) -> int:
    if not args.kafka_endpoint:
        raise ConfigurationError(
            "tail needs --kafka-endpoint or KAFKA_ENDPOINT: a run's embedded broker vanishes "
            "with it, so run `finazon-trio broker` and point both the run and tail at it"
        )
    if args.count is not None and args.count < 1:
        raise ConfigurationError(f"--count must be at least 1, not {args.count}")
    try:
        kafka = KafkaSettings(
            endpoint=args.kafka_endpoint,
            config=tuple(_key_value(item) for item in args.kafka_config),
            wait=args.kafka_wait,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    defaults = Output()
    options = TailOptions(
        topics=tuple(dict.fromkeys(args.topics or ()))
        or (defaults.price_ticks_topic, defaults.volume_stream_topic),
        symbol=args.symbol,
        from_beginning=args.from_beginning,
        count=args.count,
        chart=args.chart,
    )
    config = {"bootstrap.servers": args.kafka_endpoint, **dict(kafka.config)}
    trio.run(
        _until_interrupted_or_done,
        functools.partial(tail_topics, config, kafka.wait, options, sys.stdout),
    )
    return 0


def schema(args: argparse.Namespace) -> int:
    if args.name is None:
        for name in schemas.NAMES:
            print(f"{name}\t{schemas.load(name)['title']}")
        return 0
    try:
        text = schemas.text(args.name)
    except schemas.UnknownSchemaError as exc:
        raise ConfigurationError(str(exc)) from None
    sys.stdout.write(text)
    return 0


async def _until_interrupted_or_done(job: Callable[[], Awaitable[object]]) -> None:
    """Run ``job`` until it returns or a stop signal arrives (then cancel it: exit 0)."""
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await job()
        nursery.cancel_scope.cancel()


def generate(args: argparse.Namespace) -> int:
    tickers = [t.strip() for t in args.tickers.split(",") if t.strip()]
    start_s = None
    if args.start:
        start_s = int(dt.datetime.fromisoformat(args.start.replace("Z", "+00:00")).timestamp())
    path = generate_recording(
        args.path,
        tickers,
        minutes=args.minutes,
        seed=args.seed,
        start_s=start_s,
        dataset=args.dataset,
    )
    logger.info("wrote %s", path)
    return 0


def _positive_float(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigurationError(f"{option} wants 'max' or a positive number, not {text!r}")
    return value
