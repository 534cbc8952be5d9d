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
from finazon_trio.observe.prometheus import PREFIX
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
    lag = GaugeMetricFamily(
        PREFIX + "worker_lag_records",
        "Frames records behind the last stable offset, per assigned partition",
        labels=["partition"],
    )
    for partition, value in sorted(snap["lag"].items()):
        lag.add_metric([str(partition)], value)
    yield lag
    yield GaugeMetricFamily(
        PREFIX + "worker_lag_total_records", "Total lag of the worker", value=snap["total_lag"]
    )
    yield GaugeMetricFamily(
        PREFIX + "worker_assigned_partitions",
        "Partitions of the frames topic assigned to this worker",
        value=len(snap["partitions"]),
    )
    for name, help_text in (
        ("records", "Frames records expanded"),
        ("messages", "Messages produced (ticks and volume records)"),
        ("committed", "Transactions committed"),
        ("aborted", "Transactions aborted"),
        ("dead_letters", "Bad records sent to the dead-letter topic"),
        ("rebalances", "Rebalance callbacks (assign, revoke, lost)"),
    ):
        yield CounterMetricFamily(PREFIX + f"worker_{name}", help_text, value=snap[name])
    bad = CounterMetricFamily(
        PREFIX + "worker_bad_records", "Records that are not frames records", labels=["reason"]
    )
    for reason, count in sorted(snap["bad_records"].items()):
        bad.add_metric([reason], count)
    yield bad
    yield GaugeMetricFamily(
        PREFIX + "worker_last_commit_seconds",
        "Duration of the last send_offsets + commit",
        value=snap["last_commit_ms"] / 1000,
    )
