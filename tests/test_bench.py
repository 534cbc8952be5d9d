"""The benchmark runs end to end on a tiny input and writes its report. No figure is checked:
speed is measured by running the benchmark, never by tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench


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
