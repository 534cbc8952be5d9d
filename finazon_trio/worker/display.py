"""What a worker shows: the dashboard (a pure function of a snapshot), the log line, and the
Prometheus families. Lag comes first everywhere: it is the number an operator watches.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from rich.console import Group
from rich.table import Table
from rich.text import Text

from finazon_trio.observe.metrics import LATENCY_BUCKETS_MS
from finazon_trio.observe.prometheus import counters, gauge, histogram, labelled
from finazon_trio.observe.stats import latency_quantiles

#: The counters whose per-second rates are shown.
RATED = ("records", "messages", "committed")


def rate_counters(snap: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(snap[name]) for name in RATED}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def log_line(snap: Mapping[str, Any], rates: Mapping[str, float]) -> str:
    """One line: lag first, then the partitions, rates and transactions."""
    p50, p99 = latency_quantiles(snap["commit_latency"], LATENCY_BUCKETS_MS)
    lag = snap["lag"]
    per = " ".join(f"p{p}={lag[p] if lag[p] >= 0 else '?'}" for p in sorted(lag))
    return (
        f"lag {snap['total_lag']:,} ({per or 'no partitions'}); "
        f"{rates.get('records', 0):,.0f} frames/s, {rates.get('messages', 0):,.0f} messages/s; "
        f"transactions {snap['committed']:,} committed, {snap['aborted']:,} aborted, "
        f"commit p50 {_ms(p50)} p99 {_ms(p99)}; bad records {sum(snap['bad_records'].values())}"
    )


def render(snap: Mapping[str, Any], rates: Mapping[str, float], now: float | None = None) -> Group:
    """The worker's dashboard: a headline with the total lag, then one row per partition."""
    now = time.time() if now is None else now
    p50, p99 = latency_quantiles(snap["commit_latency"], LATENCY_BUCKETS_MS)
    headline = Text.assemble(
        ("LAG ", "bold"),
        (f"{snap['total_lag']:,}", "bold red" if snap["total_lag"] > 10_000 else "bold green"),
        f"  worker {snap['worker_id']} in group {snap['group']} at {snap['endpoint']}, "
        f"{snap['state']}, up {now - snap['started_at']:.0f} s",
    )
    totals = Table(box=None, show_header=True)
    for column in ("frames/s", "messages/s", "committed", "aborted", "commit p50", "commit p99"):
        totals.add_column(column, justify="right")
    totals.add_row(
        f"{rates.get('records', 0):,.0f}",
        f"{rates.get('messages', 0):,.0f}",
        f"{snap['committed']:,}",
        f"{snap['aborted']:,}",
        _ms(p50),
        _ms(p99),
    )
    parts = Table(title="assigned partitions", box=None)
    parts.add_column("partition", justify="right")
    parts.add_column("lag", justify="right")
    for partition in snap["partitions"]:
        lag = snap["lag"].get(partition, -1)
        parts.add_row(str(partition), f"{lag:,}" if lag >= 0 else "?")
    return Group(headline, totals, parts)


def families(snap: Mapping[str, Any]) -> Iterator[Metric]:
    """The worker's metrics for ``--metrics-port``."""
    lag = {str(partition): value for partition, value in snap["lag"].items()}
    yield labelled(
        GaugeMetricFamily,
        "worker_lag_records",
        "Frames records behind the last stable offset, per assigned partition",
        "partition",
        lag,
    )
    yield gauge("worker_lag_total_records", "Total lag of the worker", snap["total_lag"])
    yield gauge(
        "worker_assigned_partitions",
        "Partitions of the frames topic assigned to this worker",
        len(snap["partitions"]),
    )
    yield from counters(
        snap,
        records="worker_records|Frames records expanded",
        messages="worker_messages|Messages produced (ticks and volume records)",
        committed="worker_committed|Transactions committed",
        aborted="worker_aborted|Transactions aborted",
        dead_letters="worker_dead_letters|Bad records sent to the dead-letter topic",
        rebalances="worker_rebalances|Rebalance callbacks (assign, revoke, lost)",
    )
    yield labelled(
        CounterMetricFamily,
        "worker_bad_records",
        "Records that are not frames records",
        "reason",
        snap["bad_records"],
    )
    yield gauge(
        "worker_last_commit_seconds",
        "Duration of the last send_offsets + commit",
        snap["last_commit_ms"] / 1000,
    )
    yield histogram(
        "worker_commit_latency_seconds",
        "Duration of send_offsets + commit, per transaction",
        snap["commit_latency"],
    )
