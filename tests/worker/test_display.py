"""A worker's display: the lag comes first, in the log line, the dashboard and the metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console

from finazon_trio.observe.prometheus import SnapshotCollector
from finazon_trio.worker.display import families, log_line, render
from finazon_trio.worker.metrics import WorkerMetrics


def a_worker() -> WorkerMetrics:
    metrics = WorkerMetrics(group="g", worker_id="w1", endpoint="k:9092")
    metrics.partitions = (0, 3)
    metrics.lag = {0: 120, 3: -1}
    metrics.records, metrics.messages, metrics.committed, metrics.aborted = 10, 910, 4, 1
    metrics.bad_records["bad_frames_record"] += 2
    metrics.commit_latency[3] += 4
    return metrics


def test_the_log_line_starts_with_the_lag() -> None:
    line = log_line(a_worker().snapshot(), {"records": 2.0, "messages": 182.0})
    assert line.startswith("lag 120 (p0=120 p3=?)")
    assert "2 frames/s, 182 messages/s" in line
    assert "4 committed, 1 aborted" in line
    assert line.endswith("bad records 2")


def test_the_dashboard_shows_the_lag_and_each_partition() -> None:
    console = Console(width=120, record=True)
    snap = a_worker().snapshot()
    console.print(render(snap, {}, now=snap["started_at"] + 5))
    text = console.export_text()
    assert text.startswith("LAG 120")
    assert "worker w1 in group g" in text
    assert "0  120" in text
    assert "3    ?" in text


def test_the_metrics_name_the_lag_per_partition_and_in_total() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(a_worker().snapshot(), families))
    text = generate_latest(registry).decode()
    assert 'finazon_trio_worker_lag_records{partition="0"} 120.0' in text
    assert "finazon_trio_worker_lag_total_records 120.0" in text
    assert "finazon_trio_worker_committed_total 4.0" in text
    assert 'finazon_trio_worker_bad_records_total{reason="bad_frames_record"} 2.0' in text
    assert 'finazon_trio_worker_commit_latency_seconds_bucket{le="+Inf"} 4.0' in text
