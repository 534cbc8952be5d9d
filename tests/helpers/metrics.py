"""Filling the metrics by hand, the way the pipeline's stages do."""

from __future__ import annotations

import bisect

from finazon_trio.observe.metrics import LATENCY_BUCKETS_MS


def record(histogram: list[int], seconds: float) -> None:
    """Count one latency as the publisher does (the last bucket also holds anything slower)."""
    histogram[
        min(bisect.bisect_left(LATENCY_BUCKETS_MS, seconds * 1000), len(LATENCY_BUCKETS_MS) - 1)
    ] += 1
