"""The benchmark runs end to end on a tiny input and writes its report. No figure is checked:
speed is measured by running the benchmark, never by tests."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from benchmarks import bench
from benchmarks import report as report_module


@pytest.mark.kafka
def test_the_benchmark_runs_and_writes_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "results" / "bench.json"
    options = ["--broker", "embedded", "--repeat", "1", "--frames", "120", "--json", str(path)]
    options += ["--live-rates", "50", "--live-tickers", "5", "--live-seconds", "2"]
    options += ["--live-warmup", "1", "--kafka-config", "linger.ms=5"]

    assert bench.main(options) == 0

    report = json.loads(path.read_text())
    assert report["broker"]["kind"] == "embedded"
    assert report["settings"]["kafka_config"] == {"linger.ms": "5"}
    messages = 120 * 91  # 2 tickers x 60 s, 90 price ticks and a volume message each
    for kind in ("transform", "spool", "limit", "replay", "replay_precomputed"):
        (run,) = report[kind]["runs"]
        assert run["messages"] == messages, kind
        assert report[kind]["median"]["messages_per_s"] == run["messages_per_s"]
    assert report["replay"]["runs"][0]["ok"] is True
    assert report["replay"]["ratio_to_limit"] == report["replay"]["pair_ratios"][0]
    assert report["replay"]["runs"][0]["bars_transformed"] == 120
    # the precomputed replay really skips the transform (and delivers as many messages: above)
    assert report["replay_precomputed"]["runs"][0]["bars_transformed"] == 0
    assert report["replay_precomputed"]["runs"][0]["ok"] is True
    kinds = ("limit", "replay", "replay_precomputed")
    us = {kind: 1e6 / report[kind]["median"]["messages_per_s"] for kind in kinds}
    split = report["replay_split"]
    assert split["limit_us"] == pytest.approx(us["limit"])
    assert split["transform_us"] == pytest.approx(us["replay"] - us["replay_precomputed"])
    (live,) = report["live"]
    assert (live["offered_per_s"], live["speed"]) == (50, 10)
    assert set(live["runs"][0]) >= {"received_per_s", "latency_p99_ms", "peak_rss_mb"}
    assert [t["name"].split()[0] for t in report["targets"]] == ["replay"]  # no rate >= 2000

    out = capsys.readouterr().out
    assert "limit (bare producer)" in out
    assert "spool round trip" in out
    assert "replay, precomputed" in out
    assert "leaves the transform" in out
    assert "replay >= 0.6 x limit" in out
    assert str(path) in out


def _rate(role_rate: int, p99: float, rss_growth: float) -> dict[str, Any]:
    run = {
        "received_per_s": role_rate,
        "received_ratio": 1.0,
        "backlog_end_frames": 0,
        "latency_p50_ms": 10.0,
        "latency_p99_ms": p99,
        "client_cpu": 0.5,
        "rss_mid_mb": 50.0,
        "rss_end_mb": 50.0 + rss_growth,
    }
    return {"offered_per_s": role_rate, "runs": [run], "median": run}


def _worker_runs(*cpu: float) -> dict[str, Any]:
    runs = [{"cpu_us_per_message": c, "messages_per_s": 1e6 / c} for c in cpu]
    median = statistics.median(cpu)
    return {"runs": runs, "median": {"cpu_us_per_message": median, "messages_per_s": 1e6 / median}}


def test_the_scale_out_verdicts_need_flat_memory_and_take_the_median_pair(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The ingest role's best rate counts only with p99 < 250 ms and flat memory; the cost of
    transactions is the median of the pairs' ratios, not a ratio of medians."""
    report: dict[str, Any] = {
        "live": {
            "single": [_rate(1000, 40, 0), _rate(2000, 300, 0)],
            "ingest": [_rate(3000, 40, 0), _rate(6000, 40, 20.0)],  # 6,000: memory grows
        },
        "records": 10,
        "workers": {
            "transactions": _worker_runs(1.05, 1.30, 1.02),
            "plain": _worker_runs(1.00, 1.20, 0.90),  # medians' ratio: +5%
            "processes_1": {"messages_per_s": 1.0, "cpu_us_per_message": 1.0},
            "processes_2": {"messages_per_s": 2.0, "cpu_us_per_message": 1.0},
        },
        "latency": {"rate": 500, "frames": 10, "p50_ms": 100.0, "p99_ms": 200.0},
    }
    assert report_module.transactions_cost(report["workers"]) == pytest.approx(
        [0.05, 1.30 / 1.20 - 1, 1.02 / 0.90 - 1]
    )

    report_module.print_scale_out(report)

    out = capsys.readouterr().out
    assert "PASS ingest role sustains >= 3 x single-process live" in out
    assert "3,000 / 1,000 frames/s = 3.0" in out
    assert "PASS transactions cost < 10% CPU a message: +8.3% (median of 3 pairs)" in out
