"""The performance benchmark: figures as ratios to what the Kafka client itself can do.

    python -m benchmarks.bench [--broker apache|embedded] [--repeat 3] [--frames N] [--json PATH]

One machine, one real broker started for the run (Apache Kafka 4 from ``scripts/apache_kafka.py``
by default, or the embedded Tansu broker). Each measurement runs in a fresh process
(:mod:`benchmarks.measure`), ``--repeat`` times, and the medians are reported:

1. transform: parse, validate, interpolate and encode a generated recording; no Kafka.
2. spool: its messages written to a spool segment and read back, what a live backlog costs on
   top of the pipeline; no Kafka. Then the same with ``--spool-sync``: each write fsynced.
3. limit: the same messages, encoded beforehand, produced flat out by a bare producer with the
   project's producer settings, flush included.
4. replay: the pipeline (``run_pipeline`` with the replay source, in-process, as ``finazon-trio
   replay --speed max`` runs it) over the same recording, until every message is acknowledged;
   limit and replay alternate, so that each ratio compares runs made under the same load.
5. replay, precomputed: the replay with every frame's messages computed beforehand, in the same
   rotation: what the pipeline costs without the transform, so the gap to the limit splits
   into the transform's part and the rest.
6. live: the live pipeline against ``finazon-trio serve`` (a separate process) offering
   tickers x speed frames per second, at each ``--live-rates`` rate for ``--live-seconds``.

A table goes to stdout and everything to a JSON file. Targets are printed as PASS/MISS lines.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from finazon_trio.server.synthetic import generate_recording
from finazon_trio.settings import KafkaSettings
from finazon_trio.sink.broker import EmbeddedBroker, broker_binary
from finazon_trio.sink.publisher import producer_config

from .report import print_report, print_scale_out, replay_split, sustained, targets

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench-results" / "latest.json"
#: Tickers of the generated recording (1 s updates of 1 m bars); ``--frames`` sets the length.
RECORDING_TICKERS = 200
#: A fixed start, so that every run replays the same bytes.
RECORDING_START_S = 1_731_080_000
DEFAULT_FRAMES = 36_000
#: The worker's cost of transactions moves by several points from one pair of runs to the
#: next (+0.7% to +7.0% over eight pairs on a quiet 2-core machine): the median of many.
WORKER_PAIRS = 8
DEFAULT_LIVE_RATES = (500, 1000, 2000, 4000)
#: The server streams this many tickers; its speed sets the rate (each ticker updates once a
#: simulated second, so a burst of this many frames comes every 1/speed s).
LIVE_TICKERS = 50
#: Seconds before the live figures start: connecting, subscribing, first bars.
LIVE_WARMUP = 3.0
#: Seconds a measurement process may take.
MEASURE_TIMEOUT = 600.0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    if args.scale_out:
        return _scale_out_main(args)
    with tempfile.TemporaryDirectory(prefix="finazon-bench-") as tmp:
        recording, tickers, minutes = _recording(Path(tmp), args.frames)
        config = [list(item) for item in args.kafka_config]
        transform = [_measure("transform", recording=recording) for _ in range(args.repeat)]
        spool = [_measure("spool", recording=recording, directory=tmp) for _ in range(args.repeat)]
        synced = [
            _measure("spool", "spool, synced", recording=recording, directory=tmp, sync=True)
            for _ in range(args.repeat)
        ]
        results: dict[str, Any] = {
            "transform": _summary(transform),
            "spool": _summary(spool),
            "spool_synced": _summary(synced),
        }
        with _broker(args, Path(tmp)) as (bootstrap, broker):
            _warm_up(bootstrap, recording, config)
            results |= _limit_and_replay(args.repeat, recording, bootstrap, config)
            spool_dir = str(Path(tmp) / "spool")
            results["live"] = [
                _live_rate(rate, args, bootstrap, config, spool_dir) for rate in args.live_rates
            ]
    report = {
        "version": 1,
        "started": started.isoformat(timespec="seconds"),
        "machine": _machine(),
        "broker": broker,
        "settings": {
            "repeat": args.repeat,
            "frames": results["transform"]["median"]["frames"],
            "tickers": tickers,
            "minutes": minutes,
            "live_rates": args.live_rates,
            "live_tickers": args.live_tickers,
            "live_seconds": args.live_seconds,
            "live_warmup": args.live_warmup,
            "kafka_config": dict(args.kafka_config),
        },
        "load_average": {"before": load_before, "after": os.getloadavg()},
        **results,
    }
    kept = [rate["offered_per_s"] for rate in report["live"] if sustained(rate)]
    report["live_highest_sustained"] = max(kept, default=None)
    report["replay_split"] = replay_split(report)
    report["targets"] = targets(report)
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nJSON: {args.json}")
    return 0


def _limit_and_replay(
    repeat: int, recording: str, bootstrap: str, config: list[list[str]]
) -> dict[str, Any]:
    """The limit, the replay and the replay of precomputed messages, in turn, so that the runs
    of each round share the load."""
    runs: dict[str, list[dict[str, Any]]] = {"limit": [], "replay": [], "replay_precomputed": []}
    for i in range(repeat):
        for kind in runs:
            with _topics(bootstrap, f"{kind}-{i}") as topics:
                arguments: dict[str, Any] = {"bootstrap": bootstrap, "config": config}
                runs[kind].append(_measure(kind, recording=recording, topics=topics, **arguments))
    results = {kind: _summary(kind_runs) for kind, kind_runs in runs.items()}
    limit = results["limit"]["median"]["messages_per_s"]
    for kind in ("replay", "replay_precomputed"):
        results[kind]["pair_ratios"] = [
            r["messages_per_s"] / lim["messages_per_s"]
            for r, lim in zip(runs[kind], runs["limit"], strict=True)
        ]
        results[kind]["ratio_to_limit"] = results[kind]["median"]["messages_per_s"] / limit
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--broker", choices=["apache", "embedded"], default="apache")
    where.add_argument("--bootstrap", metavar="HOST:PORT", help="use this running broker")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="replay length")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="PATH")
    parser.add_argument(
        "--live-rates",
        type=lambda text: [int(r) for r in text.split(",") if r],
        default=list(DEFAULT_LIVE_RATES),
        metavar="R1,R2,...",
        help="offered frames per second (default: %(default)s)",
    )
    parser.add_argument("--live-seconds", type=float, default=12.0, help="per rate and run")
    parser.add_argument("--live-warmup", type=float, default=LIVE_WARMUP)
    parser.add_argument("--live-tickers", type=int, default=LIVE_TICKERS)
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="only the scale-out figures: live against the ingest role at --live-rates, "
        "and the expansion workers (benchmarks/README.md, Scaling out)",
    )
    parser.add_argument(
        "--worker-pairs",
        type=int,
        default=WORKER_PAIRS,
        help="with --scale-out: runs of the worker with and without transactions, "
        "alternating (default: %(default)s)",
    )
    parser.add_argument(
        "--kafka-config",
        action="append",
        default=[],
        type=lambda item: tuple(item.split("=", 1)),
        metavar="KEY=VALUE",
        help="a librdkafka setting for the limit, the replay and live (repeatable)",
    )
    return parser


def _recording(directory: Path, frames: int) -> tuple[str, int, int]:
    """A synthetic recording of about ``frames`` frames: its path, tickers and minutes."""
    tickers = max(1, min(RECORDING_TICKERS, frames // 60))
    minutes = max(1, round(frames / (tickers * 60)))
    path = directory / "bench.jsonl"
    names = [f"T{i:04d}" for i in range(tickers)]
    generate_recording(path, names, minutes=minutes, seed=0, start_s=RECORDING_START_S)
    return str(path), tickers, minutes


@contextlib.contextmanager
def _broker(args: argparse.Namespace, directory: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A broker for the run: its bootstrap address and a description."""
    if args.bootstrap:
        yield args.bootstrap, {"kind": "external", "version": f"external at {args.bootstrap}"}
    elif args.broker == "apache":
        from .apache import ApacheKafka, kafka_version

        with ApacheKafka(directory / "kafka") as kafka:
            yield kafka.bootstrap, {"kind": "apache", "version": f"Apache Kafka {kafka_version()}"}
    else:
        with EmbeddedBroker() as broker:
            binary = Path(broker_binary()).name
            yield broker.bootstrap, {"kind": "embedded", "version": binary}


def _warm_up(bootstrap: str, recording: str, config: list[list[str]]) -> None:
    """Produce a little, then one untimed limit run: a fresh broker makes the first idempotent
    producer wait while it loads its coordinator, and Apache Kafka's JVM takes millions of
    messages to compile its hot path (a cold broker took 280k messages/s in the limit where a
    warm one took 510k, and made the first live runs fall behind into the spool)."""
    with _topics(bootstrap, "warm-up") as topics:
        producer = Producer(producer_config(KafkaSettings(), bootstrap))
        for i in range(1000):
            producer.produce(topics[0], b"warm-up", str(i).encode())
        if producer.flush(120):
            raise RuntimeError(f"the broker at {bootstrap} does not take messages")
    with _topics(bootstrap, "warm-up-limit") as topics:
        arguments: dict[str, Any] = {"bootstrap": bootstrap, "config": config}
        _measure("limit", "warm-up", recording=recording, topics=topics, **arguments)


@contextlib.contextmanager
def _topics(bootstrap: str, name: str) -> Iterator[list[str]]:
    """Two fresh topics (price ticks, volume stream), deleted afterwards to free the broker."""
    topics = [f"bench-{name}-ticks-{time.time_ns()}", f"bench-{name}-volume-{time.time_ns()}"]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(t, 1, 1) for t in topics]).values():
        future.result()
    try:
        yield topics
    finally:
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            with contextlib.suppress(confluent_kafka.KafkaException):
                future.result()


def _measure(kind: str, label: str = "", **arguments: Any) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its result."""
    command = [sys.executable, "-m", "benchmarks.measure", kind, orjson.dumps(arguments).decode()]
    done = subprocess.run(
        command, cwd=ROOT, stdout=subprocess.PIPE, check=True, timeout=MEASURE_TIMEOUT
    )
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    result["load_average"] = os.getloadavg()[0]  # other work on the machine, just after
    print(f"  {label or kind}: {_brief(result)}", file=sys.stderr, flush=True)
    return result


def _brief(result: dict[str, Any]) -> str:
    if "offered_per_s" in result:
        return (
            f"{result['received_per_s']:.0f}/{result['offered_per_s']:.0f} frames/s, "
            f"p99 {result['latency_p99_ms'] or 0:.0f} ms"
        )
    if "p99_ms" in result:  # the scale-out latency
        return f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms"
    return f"{result['frames_per_s']:.0f} frames/s, {result['messages_per_s']:.0f} messages/s"


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs, and the median of each numeric figure."""
    median: dict[str, float | None] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if type(r[key]) in (int, float)]  # not bool, not None
        if values or runs[0][key] is None:
            median[key] = statistics.median(values) if values else None
    return {"runs": runs, "median": median}


def _live_rate(
    rate: int,
    args: argparse.Namespace,
    bootstrap: str,
    config: list[list[str]],
    spool_dir: str,
    *,
    ingest: bool = False,
) -> dict[str, Any]:
    """One offered rate, ``--repeat`` times, each against a fresh server."""
    runs = []
    speed = rate / args.live_tickers
    for i in range(args.repeat):
        with _server(speed) as (port, pid), _topics(bootstrap, f"live{rate}-{i}") as topics:
            runs.append(
                _measure(
                    "live",
                    port=port,
                    server_pid=pid,
                    bootstrap=bootstrap,
                    topics=topics,
                    config=config,
                    tickers=args.live_tickers,
                    rate=rate,
                    seconds=args.live_seconds,
                    warmup=args.live_warmup,
                    spool_dir=spool_dir,
                    frames_topic=f"{topics[0]}-frames" if ingest else None,
                )
            )
    summary = _summary(runs)
    summary["offered_per_s"] = rate
    summary["speed"] = speed
    return summary


def _scale_out_main(args: argparse.Namespace) -> int:
    """The scale-out figures in one run (see ``--scale-out``), printed and written as JSON."""
    from .scale_out import fill_frames

    with tempfile.TemporaryDirectory(prefix="finazon-bench-") as tmp:
        recording, _, _ = _recording(Path(tmp), args.frames)
        config = [list(item) for item in args.kafka_config]
        with _broker(args, Path(tmp)) as (bootstrap, broker):
            _warm_up(bootstrap, recording, config)
            spool_dir = str(Path(tmp) / "spool")
            live = {
                role: [
                    _live_rate(r, args, bootstrap, config, spool_dir, ingest=role == "ingest")
                    for r in args.live_rates
                ]
                for role in ("single", "ingest")
            }
            frames_topic = f"bench-frames-{time.time_ns()}"
            records = fill_frames(recording, bootstrap, frames_topic)
            arguments: dict[str, Any] = {
                "bootstrap": bootstrap,
                "frames_topic": frames_topic,
                "records": records,
            }
            # A fresh broker's first transactions are slow (its transaction coordinator loads,
            # the JVM compiles that path): the first run with them cost 18% more CPU a message
            # than the later ones. One run to warm it, not counted.
            _measure(
                "worker", "warm-up", tag=f"warm-{time.time_ns()}", transactions=True, **arguments
            )
            workers: dict[str, Any] = {"transactions": [], "plain": []}
            for i in range(args.worker_pairs):  # alternating: neither always goes first
                for transactions in (True, False) if i % 2 == 0 else (False, True):
                    label = f"worker, {'with' if transactions else 'without'} transactions"
                    workers["transactions" if transactions else "plain"].append(
                        _measure(
                            "worker",
                            label,
                            tag=f"w{i}{transactions:d}-{time.time_ns()}",
                            transactions=transactions,
                            **arguments,
                        )
                    )
            for count in (1, 2):
                workers[f"processes_{count}"] = _measure(
                    "worker_processes", tag=f"p{count}-{time.time_ns()}", count=count, **arguments
                )
            latency = _measure(
                "latency",
                tag=f"lat-{time.time_ns()}",
                bootstrap=bootstrap,
                rate=500,
                seconds=args.live_seconds,
            )
    report = {
        "broker": broker,
        "machine": _machine(),
        "live": live,
        "records": records,
        "workers": {k: _summary(v) if isinstance(v, list) else v for k, v in workers.items()},
        "latency": latency,
    }
    print_scale_out(report)
    path = args.json.with_name("scale-out.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nJSON: {path}")
    return 0


@contextlib.contextmanager
def _server(speed: float) -> Iterator[tuple[int, int]]:
    """``finazon-trio serve`` (synthetic market) in its own process: its port and pid."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "finazon_trio", "--log-level", "warning", "serve"]
    command += ["--port", str(port), "--speed", f"{speed:g}"]
    with subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL) as process:
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("finazon-trio serve did not start") from None
                    time.sleep(0.05)
            yield port, process.pid
        finally:
            process.terminate()
            process.wait(10)


def _machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
    }


if __name__ == "__main__":
    sys.exit(main())
