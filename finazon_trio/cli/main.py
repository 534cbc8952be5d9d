"""The ``finazon-trio`` command: live, replay, republish, serve, broker and generate."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio
from rich.console import Console
from rich.markup import escape

from finazon_trio import __version__
from finazon_trio.errors import ConfigurationError, FinazonTrioError
from finazon_trio.observe.metrics import Metrics, PublisherMetrics
from finazon_trio.observe.summary import summary_table
from finazon_trio.pipeline import RunResult, Source, run_pipeline
from finazon_trio.recording import RecordingHeader, header_from_settings, read_header
from finazon_trio.server.app import ServerConfig, serve
from finazon_trio.server.synthetic import generate_recording
from finazon_trio.settings import (
    DEFAULT_AGGREGATION,
    DEFAULT_DATASET,
    DEFAULT_FLUSH_TIMEOUT,
    DEFAULT_FREQUENCY,
    DEFAULT_POINTS,
    DEFAULT_PRICE_TICKS_TOPIC,
    DEFAULT_URL,
    DEFAULT_VOLUME_STREAM_TOPIC,
    KafkaSettings,
    LiveSettings,
    Output,
    Settings,
    Subscription,
    default_spool_dir,
)
from finazon_trio.sink.broker import run_embedded_broker
from finazon_trio.sink.failed import FailedFile
from finazon_trio.sink.republish import republish
from finazon_trio.source.live import live_source
from finazon_trio.source.replay import replay_source

logger = logging.getLogger("finazon_trio")

EXIT_FAILED = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    status = EXIT_FAILED
    try:
        status = args.handler(args)
    except* ConfigurationError as group:
        _print_errors(group)
        status = EXIT_USAGE
    except* (FinazonTrioError, ValueError) as group:
        _print_errors(group)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finazon-trio",
        description="Stream Finazon real-time market data into Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    live = commands.add_parser("live", help="stream from Finazon (FINAZON_API_KEY) into Kafka")
    live.add_argument("--tickers", required=True, help="comma-separated, e.g. AAPL,MSFT")
    live.add_argument("--dataset", default=DEFAULT_DATASET)
    live.add_argument("--frequency", default=DEFAULT_FREQUENCY, help="update interval")
    live.add_argument("--aggregation", default=DEFAULT_AGGREGATION, help="bar size")
    live.add_argument("--url", default=DEFAULT_URL, help="Finazon WebSocket URL, without key")
    live.add_argument("--heartbeat-interval", type=float, default=30.0, metavar="SECONDS")
    live.add_argument("--stale-timeout", type=float, default=60.0, metavar="SECONDS")
    live.add_argument("--max-backoff", type=float, default=30.0, metavar="SECONDS")
    live.add_argument("--max-retries", type=int, default=None, help="default: unlimited")
    live.add_argument("--connections", type=int, default=1, help="spread tickers over N")
    live.add_argument("--record", type=Path, metavar="PATH", help="write frames to JSONL")
    _add_output_options(live)
    live.set_defaults(handler=_live)

    replay = commands.add_parser("replay", help="publish a recording through the pipeline")
    replay.add_argument("recording", type=Path)
    replay.add_argument(
        "--speed", default="max", help="'max' (default) or a factor of the recorded pace"
    )
    _add_output_options(replay)
    replay.set_defaults(handler=_replay)

    again = commands.add_parser(
        "republish", help="publish undelivered messages (failed-messages files, spool dirs)"
    )
    again.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="published in order")
    _add_kafka_options(again)
    again.set_defaults(handler=_republish)

    srv = commands.add_parser("serve", help="a Finazon-compatible WebSocket server")
    srv.add_argument("recording", type=Path, nargs="?", help="stream this (default: synthetic)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8765)
    srv.add_argument("--api-key", action="append", default=[], help="accepted key (repeatable)")
    srv.add_argument("--speed", type=float, default=1.0)
    srv.add_argument("--loop", action="store_true", help="start the recording again at its end")
    srv.add_argument("--seed", type=int, default=0)
    srv.add_argument("--drop-every", type=float, metavar="SECONDS")
    srv.add_argument("--stall-after", type=float, metavar="SECONDS")
    srv.add_argument("--garbage-rate", type=float, default=0.0, metavar="FRACTION")
    srv.add_argument("--reject-auth", action="store_true", help="refuse every API key")
    srv.add_argument(
        "--auth-failure",
        choices=["reject", "message", "close"],
        default="reject",
        help="how a bad key is refused: HTTP 401, an error message, or a 1008 close",
    )
    srv.add_argument(
        "--unknown-ticker", action="append", default=[], help="refuse this ticker (repeatable)"
    )
    srv.add_argument(
        "--frame-style",
        choices=["flat", "wrapped", "legacy"],
        default="flat",
        help='synthetic bars as flat frames, {"data": [...]}, or the older flat shape',
    )
    srv.set_defaults(handler=_serve)

    broker = commands.add_parser("broker", help="run the embedded Kafka-compatible broker")
    broker.add_argument("--port", type=int, default=9092)
    broker.set_defaults(handler=_broker)

    gen = commands.add_parser("generate", help="write a synthetic recording")
    gen.add_argument("path", type=Path)
    gen.add_argument("--tickers", default="AAPL,MSFT,GOOGL,AMZN,TSLA")
    gen.add_argument("--minutes", type=int, default=4)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--start", help="ISO time of the first update, e.g. 2024-11-08T15:30:30Z")
    gen.add_argument("--dataset", default=DEFAULT_DATASET)
    gen.set_defaults(handler=_generate)
    return parser


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument("--price-ticks-topic", default=DEFAULT_PRICE_TICKS_TOPIC)
    out.add_argument("--volume-stream-topic", default=DEFAULT_VOLUME_STREAM_TOPIC)
    out.add_argument("--dead-letter-topic", help="publish rejected frames here")
    out.add_argument("--points", type=int, default=DEFAULT_POINTS, help="price ticks per frame")
    out.add_argument("--path", choices=["linear", "extremes"], default="linear")
    out.add_argument("--volume-format", choices=["descriptive", "raw"], default="descriptive")
    out.add_argument(
        "--dashboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live display on stderr (default: when stderr is a terminal)",
    )
    out.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on this port"
    )
    _add_kafka_options(parser)


def _add_kafka_options(parser: argparse.ArgumentParser) -> None:
    kafka = parser.add_argument_group("kafka")
    kafka.add_argument(
        "--kafka-endpoint",
        default=os.environ.get("KAFKA_ENDPOINT"),
        help="bootstrap servers (env KAFKA_ENDPOINT); default: start the embedded broker",
    )
    kafka.add_argument(
        "--kafka-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any librdkafka setting (repeatable), e.g. security.protocol=SASL_SSL",
    )
    kafka.add_argument("--partitions", type=int, default=1, help="for topics it creates")
    kafka.add_argument("--replication-factor", type=int, default=1)
    kafka.add_argument("--no-create-topics", dest="create_topics", action="store_false")
    kafka.add_argument(
        "--flush-timeout", type=float, default=DEFAULT_FLUSH_TIMEOUT, metavar="SECONDS"
    )
    kafka.add_argument(
        "--kafka-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="wait this long at start for a broker that does not answer yet",
    )
    kafka.add_argument(
        "--spool-dir",
        type=Path,
        metavar="DIR",
        help="live mode keeps what Kafka cannot take yet on disk here "
        "(default: $XDG_STATE_HOME/finazon-trio, or ~/.local/state/finazon-trio)",
    )
    kafka.add_argument(
        "--failed-path",
        type=Path,
        metavar="PATH",
        help="append undelivered messages here (default: SPOOL_DIR/failed-<run>.jsonl)",
    )


def _settings(
    args: argparse.Namespace,
    subscription: Subscription,
    *,
    live: LiveSettings | None = None,
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
            ),
            kafka=KafkaSettings(
                endpoint=args.kafka_endpoint or None,
                config=tuple(_key_value(item) for item in args.kafka_config),
                create_topics=args.create_topics,
                partitions=args.partitions,
                replication_factor=args.replication_factor,
                flush_timeout=args.flush_timeout,
                wait=args.kafka_wait,
                spool_dir=args.spool_dir,
                failed_path=args.failed_path,
            ),
            live=live or LiveSettings(),
            record=record,
            dashboard=args.dashboard if args.dashboard is not None else sys.stderr.isatty(),
            metrics_port=args.metrics_port,
            speed=speed,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigurationError(f"--kafka-config wants KEY=VALUE, not {item!r}")
    return key.strip(), value


def _live(args: argparse.Namespace) -> int:
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
        live = LiveSettings(
            url=args.url,
            api_key=api_key,
            heartbeat_interval=args.heartbeat_interval,
            stale_timeout=args.stale_timeout,
            max_backoff=args.max_backoff,
            max_retries=args.max_retries,
            connections=args.connections,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    settings = _settings(args, subscription, live=live, record=args.record)
    metrics = Metrics(mode="live")
    source: Source = functools.partial(live_source, settings, metrics=metrics.source)
    header = header_from_settings(settings, settings.live.url)
    return _finish(trio.run(_run, settings, source, metrics, header), metrics)


def _replay(args: argparse.Namespace) -> int:
    speed = None if args.speed == "max" else _positive_float(args.speed, "--speed")
    header = read_header(args.recording)
    settings = _settings(args, header.subscription(), speed=speed)
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


def _republish(args: argparse.Namespace) -> int:
    try:
        kafka = KafkaSettings(
            endpoint=args.kafka_endpoint or None,
            config=tuple(_key_value(item) for item in args.kafka_config),
            flush_timeout=args.flush_timeout,
            wait=args.kafka_wait,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    spool_root = args.spool_dir or default_spool_dir()
    failed = FailedFile(args.failed_path or spool_root / f"failed-{stamp}-{os.getpid()}.jsonl")
    metrics = PublisherMetrics()
    result = trio.run(republish, args.paths, kafka, failed, metrics)
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


def _serve(args: argparse.Namespace) -> int:
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
    )
    trio.run(_until_interrupted, functools.partial(serve, config))
    return 0


def _broker(args: argparse.Namespace) -> int:
    trio.run(_until_interrupted, functools.partial(run_embedded_broker, args.port))
    return 0


async def _until_interrupted(service: Callable[..., Awaitable[object]]) -> None:
    async with trio.open_nursery() as nursery:
        started = await nursery.start(service)
        logger.info("listening on %s; Ctrl-C stops", started)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


def _generate(args: argparse.Namespace) -> int:
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


def _print_errors(group: BaseExceptionGroup[BaseException]) -> None:
    console = Console(stderr=True)
    for exc in _leaves(group):
        # One line however long, and the text as is (an error may quote "[...]" from the user).
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
