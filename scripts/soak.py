"""Soak test: ``finazon-trio live`` against ``finazon-trio serve`` at a steady rate for minutes.

Starts three child processes: a broker (``finazon-trio broker``, the embedded one, unless
``--kafka-endpoint`` names a cluster), the server (synthetic bars for ``--tickers`` tickers,
``--rate`` frames a second in all, dropping every connection ``--drop-every`` seconds after it
opens so that reconnects are part of the soak) and the live client, its Prometheus endpoint on.
Every ``--interval`` seconds it samples the live process: resident memory and open file
descriptors (``/proc/PID``), frames and deliveries, reconnects, the receipt → Kafka
acknowledgement latency (p50/p99 over the interval, from
``finazon_trio_receipt_to_ack_latency_seconds``) and the unacknowledged queue. It prints one
row per sample, then compares the first and the last quarter of the run (after a short
warm-up) and says, for each figure, whether it drifted. Finally it stops the client with
SIGINT, which must flush and exit 0 with delivered == produced.

Exit status 0: no drift and a clean exit; 1 otherwise. Nothing is hidden: every sample is
printed, and the children's logs stay in ``--workdir``::

    python scripts/soak.py --minutes 10 --rate 50
    nox -s soak -- --minutes 3
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from finazon_trio.observe.stats import quantile

PREFIX = "finazon_trio_"
LATENCY = PREFIX + "receipt_to_ack_latency_seconds"
#: Seconds a child may take to come up (the embedded broker, Kafka topics, the subscription).
START_TIMEOUT = 60.0
#: Seconds the live client may take to flush and exit after SIGINT.
STOP_TIMEOUT = 90.0
MIB = 1024 * 1024
#: Drift thresholds: what the last quarter may add to the first before it counts as drift.
RSS_SLACK = (0.05, 16 * MIB)  # 5 % or 16 MiB, whichever is larger
FD_SLACK = 2
LATENCY_SLACK = (2.0, 0.025)  # twice, and at least 25 ms more
RATE_FLOOR = 0.9  # frames/s must stay above 90 % of the asked rate


@dataclass(frozen=True)
class Sample:
    """One look at the live process. Counters are cumulative since it started."""

    at: float  # seconds since the client started
    rss: int  # bytes
    fds: int
    frames: float
    delivered: float
    reconnects: float
    queued: float
    #: Cumulative (upper bound, count) pairs of the receipt → ack latency histogram.
    latency: tuple[tuple[float, float], ...]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="finazon-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tickers = [f"S{i:03d}" for i in range(args.tickers)]
    speed = args.rate / len(tickers)
    print(
        f"soak: {args.minutes:g} min, {args.rate:g} frames/s ({len(tickers)} tickers at "
        f"speed {speed:g}), drop every {args.drop_every or 'never'} s, "
        f"sample every {args.interval:g} s; logs in {workdir}",
        flush=True,
    )
    with ExitStack() as children:
        bootstrap = args.kafka_endpoint
        if bootstrap is None:
            port = free_port()
            children.enter_context(child(["broker", "--port", str(port)], workdir / "broker.log"))
            wait_for(lambda: accepts(port), "the embedded broker", workdir / "broker.log")
            bootstrap = f"127.0.0.1:{port}"
        ws_port, metrics_port = free_port(), free_port()
        serve = ["serve", "--port", str(ws_port), "--speed", f"{speed:g}", "--seed", "1"]
        if args.drop_every:
            serve += ["--drop-every", f"{args.drop_every:g}"]
        children.enter_context(child(serve, workdir / "serve.log"))
        wait_for(
            lambda: "server on ws://" in (workdir / "serve.log").read_text(),
            "the server",
            workdir / "serve.log",
        )
        topic = f"soak-{os.getpid()}-{int(time.time())}"
        live_log = workdir / "live.log"
        live = children.enter_context(
            child(
                [
                    *("live", "--tickers", ",".join(tickers)),
                    *("--url", f"ws://127.0.0.1:{ws_port}/v1", "--kafka-endpoint", bootstrap),
                    *("--metrics-port", str(metrics_port), "--no-dashboard"),
                    *("--price-ticks-topic", f"{topic}-ticks"),
                    *("--volume-stream-topic", f"{topic}-volume"),
                ],
                live_log,
                env={"FINAZON_API_KEY": "soak-key"},
            )
        )
        started = time.monotonic()
        wait_for(lambda: subscribed(metrics_port), "the live client's subscription", live_log)
        samples = watch(live, metrics_port, started, args.minutes * 60, args.interval, live_log)
        status, summary = stop(live, live_log)
    print()
    return report(samples, args, status, summary)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--rate", type=float, default=50.0, help="frames a second (default 50)")
    parser.add_argument("--tickers", type=int, default=50, help="tickers (default 50)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--drop-every",
        type=float,
        default=90.0,
        metavar="SECONDS",
        help="the server drops each connection this long after it opens (0: never; default 90: "
        "over a minute, so each connection counts as healthy and the backoff starts afresh)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds left out of the drift comparison (default: 10 %% of the run, at most 60)",
    )
    parser.add_argument("--kafka-endpoint", help="a cluster (default: the embedded broker)")
    parser.add_argument("--workdir", help="where the children's logs go (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.tickers < 1 or args.rate <= 0 or args.minutes <= 0 or args.interval <= 0:
        parser.error("--tickers, --rate, --minutes and --interval must be positive")
    return args


# --- the children -------------------------------------------------------------------------


@contextmanager
def child(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m finazon_trio ARGS`` with its output in ``log``; stopped (SIGINT, then
    SIGKILL) when the block ends, unless it already exited."""
    environ = {k: v for k, v in os.environ.items() if k not in ("KAFKA_ENDPOINT",)}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "finazon_trio", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ | (env or {}),
            cwd=log.parent,  # anything written to a default (relative) path stays there
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_for(condition: Callable[[], bool], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise SystemExit(f"soak: {what} did not come up within {START_TIMEOUT:g} s\n{tail}")
        time.sleep(0.2)


def subscribed(metrics_port: int) -> bool:
    try:
        text = fetch(metrics_port)
    except OSError:
        return False
    return re.search(r'^finazon_trio_source_state\{state="subscribed"\} 1', text, re.M) is not None


def fetch(metrics_port: int) -> str:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def stop(live: subprocess.Popen[bytes], log: Path) -> tuple[int | None, dict[str, int]]:
    """SIGINT the client and wait; its exit status and end-of-run summary."""
    live.send_signal(signal.SIGINT)
    try:
        status: int | None = live.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        status = None
    rows = re.findall(r"^│ ([a-z :_]+?)\s+│\s+([\d,]+) │$", log.read_text(errors="replace"), re.M)
    return status, {name: int(count.replace(",", "")) for name, count in rows}


# --- sampling -----------------------------------------------------------------------------


def watch(
    live: subprocess.Popen[bytes],
    metrics_port: int,
    started: float,
    duration: float,
    interval: float,
    log: Path,
) -> list[Sample]:
    """Sample every ``interval`` seconds for ``duration`` seconds, printing a row each time."""
    print(
        f"{'time':>6} {'frames/s':>9} {'msgs/s':>9} {'RSS MiB':>8} {'fds':>4} "
        f"{'reconn':>6} {'p50 ms':>7} {'p99 ms':>7} {'queued':>7}",
        flush=True,
    )
    samples: list[Sample] = []
    next_at = time.monotonic()
    end = next_at + duration
    while True:
        if live.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"soak: the live client exited early ({live.returncode})\n{tail}")
        samples.append(sample(live.pid, metrics_port, time.monotonic() - started))
        if len(samples) > 1:
            print(row(samples[-2], samples[-1]), flush=True)
        if next_at >= end:
            return samples
        next_at = min(next_at + interval, end)
        time.sleep(max(0.0, next_at - time.monotonic()))


def sample(pid: int, metrics_port: int, at: float) -> Sample:
    values: dict[str, float] = {}
    latency: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(fetch(metrics_port)):
        for s in family.samples:
            if s.name == LATENCY + "_bucket":
                latency.append((float(s.labels["le"]), s.value))
            elif not s.labels:
                values[s.name] = s.value
    return Sample(
        at=at,
        rss=rss_bytes(pid),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        frames=values.get(PREFIX + "frames_received_total", 0.0),
        delivered=values.get(PREFIX + "messages_delivered_total", 0.0),
        reconnects=values.get(PREFIX + "reconnects_total", 0.0),
        queued=values.get(PREFIX + "messages_queued", 0.0),
        latency=tuple(sorted(latency)),
    )


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def latency_quantile(first: Sample, last: Sample, q: float) -> float | None:
    """The ``q`` quantile (seconds) of the latencies recorded between two samples."""
    bounds = [bound for bound, _ in last.latency if math.isfinite(bound)]
    earlier = dict(first.latency)
    cumulative = [count - earlier.get(bound, 0.0) for bound, count in last.latency]
    counts = [int(b - a) for a, b in zip([0.0, *cumulative], cumulative, strict=False)]
    return quantile(bounds, counts, q) if bounds else None


def row(previous: Sample, current: Sample) -> str:
    span = current.at - previous.at
    p50, p99 = (latency_quantile(previous, current, q) for q in (0.5, 0.99))
    return (
        f"{current.at:6.0f} {(current.frames - previous.frames) / span:9.1f} "
        f"{(current.delivered - previous.delivered) / span:9.0f} {current.rss / MIB:8.1f} "
        f"{current.fds:4d} {current.reconnects:6.0f} {ms(p50):>7} {ms(p99):>7} "
        f"{current.queued:7.0f}"
    )


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


# --- the verdict --------------------------------------------------------------------------


def report(
    samples: list[Sample], args: argparse.Namespace, status: int | None, summary: dict[str, int]
) -> int:
    """Compare the first and the last quarter after the warm-up; print the verdict."""
    duration = samples[-1].at - samples[0].at
    warmup = args.warmup if args.warmup is not None else min(60.0, duration / 10)
    kept = [s for s in samples if s.at - samples[0].at >= warmup]
    quarter = max(2, len(kept) // 4)
    if len(kept) < 2 * quarter:
        print(f"soak: too few samples after a {warmup:.0f} s warm-up to compare quarters")
        return 1
    q1, q4 = kept[:quarter], kept[-quarter:]
    print(
        f"drift: first quarter ({q1[0].at:.0f}-{q1[-1].at:.0f} s) against the last "
        f"({q4[0].at:.0f}-{q4[-1].at:.0f} s), after a {warmup:.0f} s warm-up"
    )
    if q4[-1].at - q4[0].at < 60:
        print("  (quarters under a minute long: expect noisy latency figures; run longer)")
    checks: list[tuple[str, str, str, bool]] = []

    rss1, rss4 = (statistics.median(s.rss for s in q) for q in (q1, q4))
    slack = max(RSS_SLACK[0] * rss1, RSS_SLACK[1])
    slope = per_minute([(s.at, s.rss / MIB) for s in kept])
    checks.append(
        (
            "RSS (median)",
            f"{rss1 / MIB:.1f} MiB",
            f"{rss4 / MIB:.1f} MiB ({slope:+.2f} MiB/min over the run)",
            rss4 - rss1 <= slack,
        )
    )
    fd1, fd4 = (statistics.median(s.fds for s in q) for q in (q1, q4))
    checks.append(("open fds (median)", f"{fd1:g}", f"{fd4:g}", fd4 - fd1 <= FD_SLACK))
    rc1, rc4 = (rate(q, "reconnects") * 60 for q in (q1, q4))
    expected = f" (server drops: {60 / args.drop_every:.1f}/min)" if args.drop_every else ""
    checks.append(
        ("reconnects/min", f"{rc1:.1f}", f"{rc4:.1f}{expected}", rc4 <= max(rc1 * 1.5, rc1 + 1))
    )
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        l1, l4 = (latency_quantile(part[0], part[-1], q) for part in (q1, q4))
        checks.append((f"receipt→ack {name}", f"{ms(l1)} ms", f"{ms(l4)} ms", steady(l1, l4)))
    fr1, fr4 = (rate(q, "frames") for q in (q1, q4))
    checks.append(
        (
            "frames/s",
            f"{fr1:.1f}",
            f"{fr4:.1f} (asked {args.rate:g})",
            fr4 >= RATE_FLOOR * args.rate,
        )
    )
    qd1, qd4 = (statistics.median(s.queued for s in q) for q in (q1, q4))
    checks.append(("unacked (median)", f"{qd1:.0f}", f"{qd4:.0f}", qd4 <= 2 * qd1 + 1000))

    width = max(len(name) for name, *_ in checks)
    for name, first, last, ok in checks:
        print(f"  {name:<{width}}  {first:>12} -> {last:<40} {'ok' if ok else 'DRIFT'}")
    delivered, produced = summary.get("delivered"), summary.get("produced")
    clean = status == 0 and delivered is not None and delivered == produced
    print(
        f"stop: SIGINT -> exit status {status}, produced {produced}, delivered {delivered}, "
        f"failed {summary.get('failed')}: {'ok' if clean else 'NOT CLEAN'}"
    )
    drifted = [name for name, *_, ok in checks if not ok]
    print("verdict:", f"DRIFT in {', '.join(drifted)}" if drifted else "no drift", flush=True)
    return 0 if clean and not drifted else 1


def steady(first: float | None, last: float | None) -> bool:
    """A latency that did not grow past :data:`LATENCY_SLACK` (unknown counts as drift)."""
    if first is None or last is None:
        return False
    factor, seconds = LATENCY_SLACK
    return last <= first * factor or last - first <= seconds


def rate(samples: list[Sample], counter: str) -> float:
    """Growth per second of a counter across ``samples``."""
    first, last = samples[0], samples[-1]
    span = last.at - first.at
    grown: float = getattr(last, counter) - getattr(first, counter)
    return grown / span if span > 0 else 0.0


def per_minute(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of ``(seconds, value)`` points, per minute."""
    if len(points) < 2:
        return 0.0
    slope = statistics.linear_regression([t for t, _ in points], [v for _, v in points]).slope
    return slope * 60


if __name__ == "__main__":
    sys.exit(main())
