"""The command line's parser: commands, options and their defaults (taken from the settings)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import get_args

from finazon_trio import __version__, schemas
from finazon_trio.cli import commands
from finazon_trio.server.config import AuthStyle, FrameStyle, ServerConfig
from finazon_trio.settings import (
    BackfillSettings,
    KafkaSettings,
    LiveSettings,
    Output,
    PathMode,
    Subscription,
    VolumeFormat,
)
from finazon_trio.sink.broker import DEFAULT_BROKER_PORT
from finazon_trio.worker.config import (
    DEFAULT_COMMIT_INTERVAL,
    DEFAULT_FRAMES_PARTITIONS,
    DEFAULT_GROUP,
)

_LIVE = LiveSettings()
_SUBSCRIPTION = Subscription()
_OUTPUT = Output()
_KAFKA = KafkaSettings()
_SERVER = ServerConfig()
_BACKFILL = BackfillSettings()


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each sets ``handler``, the function that runs it."""
    parser = argparse.ArgumentParser(
        prog="finazon-trio",
        description="Stream Finazon real-time market data into Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    subcommands = parser.add_subparsers(required=True, metavar="COMMAND")

    live = subcommands.add_parser("live", help="stream from Finazon (FINAZON_API_KEY) into Kafka")
    live.add_argument("--tickers", required=True, help="comma-separated, e.g. AAPL,MSFT")
    live.add_argument("--dataset", default=_SUBSCRIPTION.dataset)
    live.add_argument("--frequency", default=_SUBSCRIPTION.frequency, help="update interval")
    live.add_argument("--aggregation", default=_SUBSCRIPTION.aggregation, help="bar size")
    live.add_argument("--url", default=_LIVE.url, help="Finazon WebSocket URL, without key")
    live.add_argument(
        "--heartbeat-interval", type=float, default=_LIVE.heartbeat_interval, metavar="SECONDS"
    )
    live.add_argument("--stale-timeout", type=float, default=_LIVE.stale_timeout, metavar="SECONDS")
    live.add_argument("--max-backoff", type=float, default=_LIVE.max_backoff, metavar="SECONDS")
    live.add_argument(
        "--max-retries", type=int, default=_LIVE.max_retries, help="default: unlimited"
    )
    live.add_argument(
        "--connections", type=int, default=_LIVE.connections, help="spread tickers over N"
    )
    live.add_argument("--record", type=Path, metavar="PATH", help="write frames to JSONL")
    fill = live.add_argument_group("gaps and backfill")
    fill.add_argument(  # on by default in live mode (the settings' default is off)
        "--no-backfill",
        dest="backfill",
        action="store_false",
        help="do not fill what a disconnect missed from the REST API",
    )
    fill.add_argument("--rest-url", default=_BACKFILL.rest_url, help="the REST API's base URL")
    fill.add_argument(
        "--backfill-timeout",
        type=float,
        default=_BACKFILL.timeout,
        metavar="SECONDS",
        help="longest a symbol's live bars wait for its backfill",
    )
    fill.add_argument(
        "--rest-calls-per-minute",
        type=int,
        default=_BACKFILL.calls_per_minute,
        metavar="N",
        help="REST call budget",
    )
    _add_output_options(live)
    _add_frames_topic(live)
    live.set_defaults(handler=commands.live)

    replay = subcommands.add_parser("replay", help="publish a recording through the pipeline")
    replay.add_argument("recording", type=Path)
    replay.add_argument(
        "--speed", default="max", help="'max' (default) or a factor of the recorded pace"
    )
    _add_output_options(replay)
    _add_frames_topic(replay)
    replay.set_defaults(handler=commands.replay)

    expand = subcommands.add_parser(
        "expand", help="an expansion worker: frames records in, ticks out, exactly once"
    )
    expand.add_argument("--frames-topic", required=True, help="the ingest role's frames topic")
    expand.add_argument("--group", default=DEFAULT_GROUP, help="the workers' consumer group")
    expand.add_argument(
        "--worker-id",
        help="stable id: static membership, and a restart fences its predecessor "
        "(default: host-pid, a dynamic member)",
    )
    expand.add_argument(
        "--commit-interval",
        type=float,
        default=DEFAULT_COMMIT_INTERVAL,
        metavar="SECONDS",
        help="commit the open transaction this often",
    )
    _add_output_options(expand, worker=True)
    expand.set_defaults(handler=commands.expand, gaps_topic=_OUTPUT.gaps_topic)

    again = subcommands.add_parser(
        "republish", help="publish undelivered messages (failed-messages files, spool dirs)"
    )
    again.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="published in order")
    _add_kafka_options(again, topics=False)
    again.set_defaults(handler=commands.republish)

    srv = subcommands.add_parser("serve", help="a Finazon-compatible WebSocket server")
    srv.add_argument("recording", type=Path, nargs="?", help="stream this (default: synthetic)")
    srv.add_argument("--host", default=_SERVER.host)
    srv.add_argument("--port", type=int, default=_SERVER.port)
    srv.add_argument("--api-key", action="append", default=[], help="accepted key (repeatable)")
    srv.add_argument("--speed", type=float, default=_SERVER.speed)
    srv.add_argument("--loop", action="store_true", help="start the recording again at its end")
    srv.add_argument("--seed", type=int, default=_SERVER.seed)
    srv.add_argument("--drop-every", type=float, metavar="SECONDS")
    srv.add_argument("--stall-after", type=float, metavar="SECONDS")
    srv.add_argument("--garbage-rate", type=float, default=_SERVER.garbage_rate, metavar="FRACTION")
    srv.add_argument("--reject-auth", action="store_true", help="refuse every API key")
    srv.add_argument(
        "--auth-failure",
        choices=get_args(AuthStyle),
        default=_SERVER.auth_failure,
        help="how a bad key is refused: HTTP 401, an error message, or a 1008 close",
    )
    srv.add_argument(
        "--unknown-ticker", action="append", default=[], help="refuse this ticker (repeatable)"
    )
    srv.add_argument(
        "--frame-style",
        choices=get_args(FrameStyle),
        default=_SERVER.frame_style,
        help='synthetic bars as flat frames, {"data": [...]}, or the older flat shape',
    )
    srv.add_argument(
        "--drop-for",
        type=float,
        metavar="SECONDS",
        help="after each --drop-every drop, refuse the key's reconnects for this much market time",
    )
    rest = srv.add_argument_group("REST time-series endpoint")
    rest.add_argument("--rest-port", type=int, metavar="PORT", help="serve it on this port")
    rest.add_argument("--rest-rate-limit", type=int, metavar="N", help="calls a minute, then 429")
    rest.add_argument(
        "--rest-failure-rate",
        type=float,
        default=_SERVER.rest_failure_rate,
        metavar="FRACTION",
        help="answer this fraction of calls 503",
    )
    rest.add_argument(
        "--rest-delay",
        type=float,
        default=_SERVER.rest_delay,
        metavar="SECONDS",
        help="wait this long before each answer",
    )
    rest.add_argument("--rest-reject-auth", action="store_true", help="refuse every REST call")
    rest.add_argument(
        "--rest-garbage-rate",
        type=float,
        default=_SERVER.rest_garbage_rate,
        metavar="FRACTION",
        help="answer this fraction of calls 200 with a malformed body",
    )
    srv.set_defaults(handler=commands.serve)

    tail = subcommands.add_parser("tail", help="print (or chart) what the output topics hold")
    tail.add_argument(
        "--topic",
        dest="topics",
        action="append",
        metavar="TOPIC",
        help=f"read this topic (repeatable; default: {_OUTPUT.price_ticks_topic} and "
        f"{_OUTPUT.volume_stream_topic})",
    )
    tail.add_argument("--symbol", help="only this symbol's records (the key)")
    tail.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record, not the end"
    )
    tail.add_argument("--count", type=int, metavar="N", help="exit after N records")
    tail.add_argument(
        "--chart", metavar="SYMBOL", help="draw a live chart of SYMBOL's ticks and bars instead"
    )
    _add_kafka_connection(tail.add_argument_group("kafka"))
    tail.set_defaults(handler=commands.tail)

    schema = subcommands.add_parser("schema", help="print the JSON Schema of a kind of record")
    schema.add_argument("name", nargs="?", help="one of: " + ", ".join(schemas.NAMES))
    schema.set_defaults(handler=commands.schema)

    broker = subcommands.add_parser("broker", help="run the embedded Kafka-compatible broker")
    broker.add_argument("--port", type=int, default=DEFAULT_BROKER_PORT)
    broker.set_defaults(handler=commands.broker)

    gen = subcommands.add_parser("generate", help="write a synthetic recording")
    gen.add_argument("path", type=Path)
    gen.add_argument("--tickers", default="AAPL,MSFT,GOOGL,AMZN,TSLA")
    gen.add_argument("--minutes", type=int, default=4)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--start", help="ISO time of the first update, e.g. 2024-11-08T15:30:30Z")
    gen.add_argument("--dataset", default=_SUBSCRIPTION.dataset)
    gen.set_defaults(handler=commands.generate)
    return parser


def _add_frames_topic(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--frames-topic",
        metavar="TOPIC",
        help="the ingest role: publish one frames record per bar here, for `expand` workers "
        f"(created with {DEFAULT_FRAMES_PARTITIONS} partitions unless --partitions)",
    )


def _add_output_options(parser: argparse.ArgumentParser, *, worker: bool = False) -> None:
    """The output and Kafka options of ``live`` and ``replay``; a ``worker`` (``expand``)
    publishes no gap records and keeps no spool or failed-messages file."""
    out = parser.add_argument_group("output")
    out.add_argument("--price-ticks-topic", default=_OUTPUT.price_ticks_topic)
    out.add_argument("--volume-stream-topic", default=_OUTPUT.volume_stream_topic)
    out.add_argument("--dead-letter-topic", help="publish rejected frames here")
    if not worker:
        out.add_argument(
            "--gaps-topic", default=_OUTPUT.gaps_topic, help="what a disconnect missed, unfilled"
        )
    out.add_argument("--points", type=int, default=_OUTPUT.points, help="price ticks per frame")
    out.add_argument("--path", choices=get_args(PathMode), default=_OUTPUT.path)
    out.add_argument(
        "--volume-format", choices=get_args(VolumeFormat), default=_OUTPUT.volume_format
    )
    out.add_argument(
        "--dashboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live display on stderr (default: when stderr is a terminal)",
    )
    out.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on this port"
    )
    _add_kafka_options(parser, producer_files=not worker)


def _add_kafka_connection(kafka: argparse._ArgumentGroup) -> None:
    """Where the cluster is and how to reach it: for producing and for ``tail``."""
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
    kafka.add_argument(
        "--kafka-wait",
        type=float,
        default=_KAFKA.wait,
        metavar="SECONDS",
        help="wait this long at start for a broker that does not answer yet",
    )


def _add_kafka_options(
    parser: argparse.ArgumentParser, *, topics: bool = True, producer_files: bool = True
) -> None:
    """The Kafka options: the connection; with ``topics`` how topics are created; with
    ``producer_files`` the flush deadline, the spool and the failed-messages file. What a
    command leaves out gets its default in the namespace, so the settings build alike."""
    kafka = parser.add_argument_group("kafka")
    _add_kafka_connection(kafka)
    if topics:
        kafka.add_argument(
            "--partitions",
            type=int,
            help=f"for topics it creates (default {_KAFKA.partitions}, the frames topic "
            f"{DEFAULT_FRAMES_PARTITIONS})",
        )
        kafka.add_argument("--replication-factor", type=int, default=_KAFKA.replication_factor)
        kafka.add_argument("--no-create-topics", dest="create_topics", action="store_false")
    else:
        parser.set_defaults(
            partitions=None, replication_factor=_KAFKA.replication_factor, create_topics=False
        )
    if not producer_files:
        parser.set_defaults(
            flush_timeout=_KAFKA.flush_timeout, spool_dir=None, failed_path=None, spool_sync=False
        )
        return
    kafka.add_argument(
        "--flush-timeout", type=float, default=_KAFKA.flush_timeout, metavar="SECONDS"
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
    kafka.add_argument(
        "--spool-sync",
        action="store_true",
        default=_KAFKA.spool_sync,
        help="live mode: fsync the spool, so that it survives a machine crash (see docs/kafka.md)",
    )
