"""A worker's counters: written by its loop thread, read as a snapshot by the trio thread.

The loop replaces ``partitions``/``lag`` wholesale (never mutates them in place) and only adds
to the integers, so a snapshot taken from another thread is consistent enough for display.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from typing import Any

import attrs

from finazon_trio.observe.metrics import LATENCY_BUCKETS_MS


class WorkerState(enum.StrEnum):
    """What a worker is doing."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    #: Replaced by a worker with the same id: its transactions are refused for good.
    FENCED = "fenced"


@attrs.define
class WorkerMetrics:
    group: str = ""
    worker_id: str = ""
    endpoint: str = ""
    #: Assigned partitions of the frames topic, sorted.
    partitions: tuple[int, ...] = ()
    #: Records behind the last stable offset, per assigned partition (from librdkafka's
    #: statistics, once a second; -1 unknown yet).
    lag: dict[int, int] = attrs.field(factory=dict)
    records: int = 0
    bad_records: Counter[str] = attrs.field(factory=Counter)
    messages: int = 0
    dead_letters: int = 0
    committed: int = 0
    aborted: int = 0
    rebalances: int = 0
    #: Duration of each ``send_offsets_to_transaction`` + ``commit_transaction``, per bucket of
    #: :data:`LATENCY_BUCKETS_MS`, and the last one in ms.
    commit_latency: list[int] = attrs.field(factory=lambda: [0] * len(LATENCY_BUCKETS_MS))
    last_commit_ms: float = 0.0
    state: WorkerState = WorkerState.STARTING
    started_at: float = attrs.field(factory=time.time)

    def snapshot(self) -> dict[str, Any]:
        snap = attrs.asdict(self, recurse=False)
        snap["bad_records"] = dict(self.bad_records)
        snap["lag"] = dict(self.lag)
        snap["commit_latency"] = list(self.commit_latency)
        # From the copy: the loop thread may replace ``lag`` meanwhile.
        snap["total_lag"] = sum(v for v in snap["lag"].values() if v > 0)
        return snap
