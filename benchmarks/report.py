"""The benchmark's verdicts and its table: pure functions of the JSON report."""

from __future__ import annotations

import statistics
from typing import Any

#: Replay's target, as a fraction of the limit's messages per second.
REPLAY_TARGET = 0.6
#: Live's target: this many frames per second sustained, with this 99th percentile latency.
LIVE_TARGET_RATE = 2000
LIVE_TARGET_P99_MS = 250.0
#: A rate is sustained when this fraction of the offered frames arrives...
SUSTAINED_RATIO = 0.95
#: ...and the backlog (channels and producer queue) at the end is under this many seconds of it.
SUSTAINED_BACKLOG_S = 0.5
#: Memory is flat when RSS grows by less than this over the second half of a live run.
FLAT_RSS_MB = 8.0
#: A worker's transactions: at most this much more CPU a message than the same loop without.
TRANSACTIONS_COST = 0.10


def sustained(rate: dict[str, Any]) -> bool:
    """Whether the live client kept up with this offered rate (medians of its runs)."""
    m = rate["median"]
    return bool(
        m["received_ratio"] >= SUSTAINED_RATIO
        and m["backlog_end_frames"] <= SUSTAINED_BACKLOG_S * rate["offered_per_s"]
    )


def rss_growth(rate: dict[str, Any]) -> float:
    """The largest RSS growth (MiB) over the second half of a run at this rate."""
    return float(max(r["rss_end_mb"] - r["rss_mid_mb"] for r in rate["runs"]))


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance targets (benchmarks/README.md), each with ``ok`` and its figures."""
    replay, limit = report["replay"]["median"], report["limit"]["median"]
    ratio = report["replay"]["ratio_to_limit"]
    out = [
        {
            "name": f"replay >= {REPLAY_TARGET} x limit",
            "ok": ratio >= REPLAY_TARGET,
            "detail": f"{ratio:.2f} ({replay['messages_per_s']:,.0f} / "
            f"{limit['messages_per_s']:,.0f} messages/s)",
        }
    ]
    rates = [r for r in report["live"] if r["offered_per_s"] >= LIVE_TARGET_RATE]
    if rates:
        rate = min(rates, key=lambda r: r["offered_per_s"])
        p99 = rate["median"]["latency_p99_ms"]
        flat = rss_growth(rate) < FLAT_RSS_MB
        out.append(
            {
                "name": f"live sustains {LIVE_TARGET_RATE} frames/s, p99 < "
                f"{LIVE_TARGET_P99_MS:.0f} ms, flat memory",
                "ok": sustained(rate) and p99 is not None and p99 < LIVE_TARGET_P99_MS and flat,
                "detail": f"at {rate['offered_per_s']}/s: received "
                f"{rate['median']['received_ratio']:.0%}, p99 {_ms(p99)} ms, RSS "
                f"{rss_growth(rate):+.1f} MiB over the second half",
            }
        )
    return out


def replay_split(report: dict[str, Any]) -> dict[str, float]:
    """The replay's wall time per message (us), split into the limit's, the rest of the
    pipeline's (precomputed replay minus limit) and the transform's (replay minus precomputed
    replay); ``transform_allowed_us`` is what the transform may cost at :data:`REPLAY_TARGET`."""
    us = {
        kind: 1e6 / report[kind]["median"]["messages_per_s"]
        for kind in ("limit", "replay", "replay_precomputed")
    }
    return {
        "replay_us": us["replay"],
        "limit_us": us["limit"],
        "rest_us": us["replay_precomputed"] - us["limit"],
        "transform_us": us["replay"] - us["replay_precomputed"],
        "transform_allowed_us": us["limit"] / REPLAY_TARGET - us["replay_precomputed"],
    }


def print_report(report: dict[str, Any]) -> None:
    """The table on stdout."""
    m, s = report["machine"], report["settings"]
    load = report["load_average"]
    print(f"\nfinazon-trio benchmark, {report['started']}, broker: {report['broker']['version']}")
    print(
        f"machine: {m['cpu']} x {m['cpus']}, Python {m['python']}, confluent-kafka "
        f"{m['confluent_kafka']} (librdkafka {m['librdkafka']})"
    )
    during = [
        r["load_average"]
        for key in ("transform", "spool", "spool_synced", "limit", "replay", "replay_precomputed")
        if key in report
        for r in report[key]["runs"]
    ]
    during += [r["load_average"] for rate in report["live"] for r in rate["runs"]]
    print(
        f"load average (1 min): {load['before'][0]:.2f} before, {min(during):.2f} to "
        f"{max(during):.2f} after each run, {load['after'][0]:.2f} after (the benchmark's own "
        "work is about 1-2 of it; the rest shares the CPUs with it)"
    )
    print(
        f"recording: {s['frames']:,} frames ({s['tickers']} tickers x {s['minutes']} min of 1 s "
        f"updates); medians of {s['repeat']} runs"
    )
    if s["kafka_config"]:
        print(f"Kafka settings overridden: {s['kafka_config']}")
    limit = report["limit"]["median"]["messages_per_s"]
    print(
        f"\n{'':24}{'frames/s':>10}{'messages/s':>12}{'x limit':>9}{'CPU us/msg':>12}"
        "  runs (messages/s)"
    )
    for name, key in (
        ("transform (no Kafka)", "transform"),
        ("spool round trip", "spool"),
        ("spool, synced", "spool_synced"),
        ("limit (bare producer)", "limit"),
        ("replay (pipeline)", "replay"),
        ("replay, precomputed", "replay_precomputed"),
    ):
        if key not in report:  # a report from before the synced spool was measured
            continue
        med = report[key]["median"]
        frames = f"{med['frames_per_s']:,.0f}"
        no_kafka = key in ("transform", "spool", "spool_synced")
        ratio = "-" if no_kafka else f"{med['messages_per_s'] / limit:.2f}"
        runs = ", ".join(f"{r['messages_per_s']:,.0f}" for r in report[key]["runs"])
        cpu = f"{med['cpu_us_per_message']:.2f}"
        print(f"{name:24}{frames:>10}{med['messages_per_s']:>12,.0f}{ratio:>9}{cpu:>12}  {runs}")
    if "spool_synced" in report:
        plain, synced = report["spool"]["median"], report["spool_synced"]["median"]
        extra = 1e6 / synced["messages_per_s"] - 1e6 / plain["messages_per_s"]
        print(
            f"--spool-sync adds {extra:.2f} us a spooled message ({synced['fsyncs']:,.0f} fsyncs "
            f"of up to {synced['messages'] / max(1, synced['fsyncs']):,.0f} messages each)"
        )
    split = report["replay_split"]
    print(
        f"replay's wall time a message: {split['replay_us']:.2f} us = limit "
        f"{split['limit_us']:.2f} + rest of the pipeline {split['rest_us']:+.2f} + transform "
        f"{split['transform_us']:.2f}; {REPLAY_TARGET} x limit leaves the transform "
        f"{split['transform_allowed_us']:.2f} us"
    )

    print(
        f"\nlive: {s['live_tickers']} tickers, {s['live_seconds']:g} s per run after "
        f"{s['live_warmup']:g} s warm-up; latency = frame receipt to Kafka acknowledgement;"
    )
    print(
        "backlog = frames waiting at the end; spooled = messages that went through the disk "
        "spool; RSS growth = MiB over the second half"
    )
    header = "offered/s received/s backlog spooled p50_ms p99_ms client_CPU server_CPU"
    header += " peak_MiB RSS_growth sustained"
    print("".join(f"{h.replace('_', ' '):>11}" for h in header.split()))
    for rate in report["live"]:
        med = rate["median"]
        cells = (
            f"{rate['offered_per_s']:,}",
            f"{med['received_per_s']:,.0f}",
            f"{med['backlog_end_frames']:,.0f}",
            f"{med['spooled_ratio']:.0%}",
            _ms(med["latency_p50_ms"]),
            _ms(med["latency_p99_ms"]),
            f"{med['client_cpu']:.0%}",
            f"{med['server_cpu']:.0%}",
            f"{med['peak_rss_mb']:.0f}",
            f"{rss_growth(rate):+.1f}",
            "yes" if sustained(rate) else "no",
        )
        print("".join(f"{c:>11}" for c in cells))
    best = report["live_highest_sustained"]
    print(f"highest rate sustained: {best:,} frames/s" if best else "no rate sustained")
    print()
    for target in report["targets"]:
        print(f"{'PASS' if target['ok'] else 'MISS'} {target['name']}: {target['detail']}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def transactions_cost(workers: dict[str, Any]) -> list[float]:
    """CPU a message with transactions over the same without them, minus one, for each pair
    of worker runs measured one after the other."""
    pairs = zip(workers["transactions"]["runs"], workers["plain"]["runs"], strict=True)
    return [t["cpu_us_per_message"] / p["cpu_us_per_message"] - 1 for t, p in pairs]


def print_scale_out(report: dict[str, Any]) -> None:
    """The scale-out figures: live single process against the ingest role, then the workers."""
    print(
        "\n  role      offered/s received/s    backlog     p50 ms     p99 ms client CPU"
        "  RSS growth  sustained"
    )
    best: dict[str, int] = {}
    for role, rates in report["live"].items():
        for rate in rates:
            m = rate["median"]
            p99 = m["latency_p99_ms"]
            ok = (
                sustained(rate)
                and p99 is not None
                and p99 < LIVE_TARGET_P99_MS
                and rss_growth(rate) < FLAT_RSS_MB
            )
            if ok:
                best[role] = max(best.get(role, 0), rate["offered_per_s"])
            print(
                f"  {role:8} {rate['offered_per_s']:>10,} {m['received_per_s']:>10,.0f} "
                f"{m['backlog_end_frames']:>10,.0f} {_ms(m['latency_p50_ms']):>10} "
                f"{_ms(p99):>10} {m['client_cpu']:>10.0%} {rss_growth(rate):>+7.1f} MiB "
                f"{'yes' if ok else 'no':>10}"
            )
    workers = report["workers"]
    txn, plain = workers["transactions"], workers["plain"]
    costs = transactions_cost(workers)
    cost = statistics.median(costs)
    print(f"\n  worker ({report['records']:,} frames records, 91 messages each), median of runs")
    print("                         messages/s  CPU us/msg  runs (CPU us/msg)")
    for label, summary in (("with transactions", txn), ("without", plain)):
        m = summary["median"]
        runs = ", ".join(f"{r['cpu_us_per_message']:.2f}" for r in summary["runs"])
        print(
            f"  {label:22} {m['messages_per_s']:>10,.0f} {m['cpu_us_per_message']:>11.2f}  {runs}"
        )
    print(f"  transactions' cost, each pair: {', '.join(f'{c:+.1%}' for c in costs)}")
    for count in (1, 2):
        m = workers[f"processes_{count}"]
        print(
            f"  {count} worker process{'es' if count > 1 else '  '}     "
            f"{m['messages_per_s']:>10,.0f} {m['cpu_us_per_message']:>11.2f}"
        )
    lat = report["latency"]
    print(
        f"\n  end to end, frames record to ticks visible to read_committed, {lat['rate']} frames/s:"
        f" p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms ({lat['frames']:,} frames)"
    )
    single, ingest = best.get("single", 0), best.get("ingest", 0)
    if single:
        ratio = ingest / single
        print(
            f"\n{'PASS' if ratio >= 3 else 'MISS'} ingest role sustains >= 3 x single-process "
            f"live (p99 < {LIVE_TARGET_P99_MS:.0f} ms, flat memory): {ingest:,} / {single:,} "
            f"frames/s = {ratio:.1f}"
        )
    else:
        print("\n(live not measured, or no rate sustained: no ingest ratio)")
    print(
        f"{'PASS' if cost < TRANSACTIONS_COST else 'MISS'} transactions cost < "
        f"{TRANSACTIONS_COST:.0%} CPU a message: {cost:+.1%} (median of {len(costs)} pairs)"
    )
