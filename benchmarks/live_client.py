"""The live measurement's client: ``finazon-trio live`` (in this process, alone in it) against a
``finazon-trio serve`` running in another process at a fixed offered rate.

After ``warmup`` seconds (connect, subscribe, first bars) it watches the pipeline for
``seconds``: frames received and processed, the backlog in the channels and the producer's
queue, CPU time and memory. Then the source stops, the rest drains, and the latency histograms
(receipt to Kafka acknowledgement) are read for everything received after the warm-up.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import trio

from finazon_trio.observe.metrics import LATENCY_BUCKETS_MS, Metrics
from finazon_trio.observe.stats import latency_quantiles
from finazon_trio.pipeline import run_pipeline
from finazon_trio.settings import KafkaSettings, LiveSettings, Output, Settings, Subscription
from finazon_trio.source.live import live_source

#: Seconds between samples of the backlog and memory.
SAMPLE_INTERVAL = 0.5
#: Seconds the pipeline may take to drain at the end; past it, a backlog is left undelivered
#: (counted) rather than making the benchmark wait for a rate it could not keep up with.
FLUSH_TIMEOUT = 10.0
_TICKS = os.sysconf("SC_CLK_TCK")


def live(
    *,
    port: int,
    server_pid: int,
    bootstrap: str,
    topics: list[str],
    config: list[list[str]],
    tickers: int,
    rate: float,
    seconds: float,
    warmup: float,
    spool_dir: str,
    frames_topic: str | None = None,
) -> dict[str, Any]:
    """Measure one offered rate; see the module docstring. ``frames_topic``: the ingest role
    (README, "Scaling out"), publishing frames records there (12 partitions) instead."""
    settings = Settings(
        subscription=Subscription(tickers=tuple(f"T{i:04d}" for i in range(tickers))),
        output=Output(
            price_ticks_topic=topics[0], volume_stream_topic=topics[1], frames_topic=frames_topic
        ),
        kafka=KafkaSettings(
            endpoint=bootstrap,
            config=tuple((k, v) for k, v in config),
            flush_timeout=FLUSH_TIMEOUT,
            spool_dir=Path(spool_dir),
            partitions=12 if frames_topic else 1,
        ),
        live=LiveSettings(url=f"ws://127.0.0.1:{port}/v1", api_key="bench"),
        dashboard=False,
    )
    metrics = Metrics(mode="live")
    watch = _Watch(metrics, server_pid, warmup, seconds, per_frame=1 if frames_topic else 91)

    async def source(send: trio.MemorySendChannel[Any]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(live_source, settings, send, metrics.source))
            await watch.run()
            nursery.cancel_scope.cancel()

    run = trio.run(functools.partial(run_pipeline, settings, source, metrics, handle_signals=False))
    return {**watch.result(rate), "undelivered": run.produced - run.delivered + run.backlog}


class _Watch:
    """Samples the running pipeline from the trio thread."""

    def __init__(
        self, metrics: Metrics, server_pid: int, warmup: float, seconds: float, per_frame: int
    ) -> None:
        """``per_frame``: messages a frame makes (1 frames record for the ingest role)."""
        self.metrics = metrics
        self.per_frame = per_frame
        self.server_pid = server_pid
        self.warmup = warmup
        self.seconds = seconds
        self.start: dict[str, Any] = {}
        self.end: dict[str, Any] = {}
        self.samples: list[dict[str, Any]] = []

    async def run(self) -> None:
        origin = trio.current_time()
        await trio.sleep_until(origin + self.warmup)
        self.start = self._sample()
        ticks = int(self.seconds / SAMPLE_INTERVAL)
        for i in range(1, ticks + 1):
            await trio.sleep_until(origin + self.warmup + i * SAMPLE_INTERVAL)
            self.samples.append(self._sample())
        self.end = self.samples[-1]

    def _sample(self) -> dict[str, Any]:
        m = self.metrics
        m.channels.sample()
        source_frames = m.channels.fill["source"][0]
        pub = m.publisher
        made = m.transform.ticks + m.transform.volume_messages
        if self.per_frame == 1:  # the ingest role: one frames record a bar
            made = m.transform.bars
        return {
            "t": time.perf_counter(),
            "cpu": time.process_time(),
            "server_cpu": _cpu_seconds(self.server_pid),
            "received": m.source.frames,
            "bars": m.transform.bars,
            # frames waiting for the transform, and the frames whose messages are made but not
            # acknowledged by Kafka yet: in batches between the stages, the spool, the
            # producer's queue
            "backlog_frames": source_frames + (made - pub.delivered - pub.failed) / self.per_frame,
            "made": made,
            "spooled": pub.spooled,
            "rss_mb": _status_mb("VmRSS"),
            "receipt_latency": list(pub.receipt_latency),
        }

    def result(self, rate: float) -> dict[str, Any]:
        start, end = self.start, self.end
        wall = end["t"] - start["t"]
        received = (end["received"] - start["received"]) / wall
        final = self.metrics.publisher.receipt_latency
        counts = [b - a for a, b in zip(start["receipt_latency"], final, strict=True)]
        p50, p99 = latency_quantiles(counts, LATENCY_BUCKETS_MS)
        backlog = [s["backlog_frames"] for s in self.samples]
        return {
            "offered_per_s": rate,
            "received_per_s": received,
            "processed_per_s": (end["bars"] - start["bars"]) / wall,
            "received_ratio": received / rate,
            "backlog_mid_frames": backlog[len(backlog) // 2],
            "backlog_end_frames": backlog[-1],
            # share of the messages made in the window that went to the spool (disk)
            "spooled_ratio": (end["spooled"] - start["spooled"])
            / max(end["made"] - start["made"], 1),
            "latency_p50_ms": None if p50 is None else p50 * 1000,
            "latency_p99_ms": None if p99 is None else p99 * 1000,
            "latency_samples": sum(counts),
            "client_cpu": (end["cpu"] - start["cpu"]) / wall,
            "server_cpu": (end["server_cpu"] - start["server_cpu"]) / wall,
            "rss_start_mb": start["rss_mb"],
            "rss_mid_mb": self.samples[len(self.samples) // 2]["rss_mb"],
            "rss_end_mb": end["rss_mb"],
            "peak_rss_mb": _status_mb("VmHWM"),
        }


def _status_mb(field: str) -> float:
    """A memory figure of this process from ``/proc/self/status``, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, in seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS
