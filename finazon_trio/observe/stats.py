"""Small pure helpers for the dashboard and the exporter: rates, latency quantiles, figures
derived from a metrics snapshot, sparklines, and number formats that keep a steady width."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram, interpolated linearly inside its bucket.

    ``counts`` has one more entry than ``bounds`` (the overflow bucket, reported as the last
    bound). None when the histogram is empty.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for i, count in enumerate(counts):
        if count and below + count >= rank:
            if i == len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - below) / count
        below += count
    return bounds[-1]


def cumulative(
    bounds: Sequence[float], counts: Sequence[int], at: Sequence[float]
) -> list[tuple[float, int]]:
    """Cumulative counts at the bounds ``at`` (each one of ``bounds``), plus ``inf``."""
    out: list[tuple[float, int]] = []
    running = 0
    i = 0
    for bound in at:
        while i < len(bounds) and bounds[i] <= bound:
            running += counts[i]
            i += 1
        out.append((bound, running))
    out.append((math.inf, sum(counts)))
    return out


class RateWindow:
    """Per-second rates of growing counters over a sliding window of samples.

    Fed one sample per refresh; a rate is the counter's growth between the oldest sample still
    in the window and the newest, so bursts (one frame per ticker each second) average out.
    """

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, Mapping[str, float]]] = deque()

    def update(self, now: float, counters: Mapping[str, float]) -> dict[str, float]:
        """Add a sample and return the rates of the counters seen at an earlier time.

        A counter that appears only later (no event time before the first frame) is measured
        from the first sample that has it.
        """
        samples = self._samples
        samples.append((now, dict(counters)))
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()
        rates: dict[str, float] = {}
        for name, value in counters.items():
            then, old = next((t, old) for t, old in samples if name in old)
            if then < now:
                rates[name] = (value - old[name]) / (now - then)
        return rates


_SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int) -> str:
    """The last ``width`` values as block characters, right-aligned in exactly ``width`` cells."""
    recent = values[-width:] if width > 0 else []
    if not recent:
        return " " * width
    low, high = min(recent), max(recent)
    if high == low:
        line = _SPARKS[3] * len(recent)
    else:
        scale = (len(_SPARKS) - 1) / (high - low)
        line = "".join(_SPARKS[round((v - low) * scale)] for v in recent)
    return line.rjust(width)


_EIGHTHS = " ▏▎▍▌▋▊▉"


def meter(fraction: float, width: int) -> str:
    """A bar of exactly ``width`` cells filled to ``fraction`` (0..1), in eighths of a cell."""
    cells = min(max(fraction, 0.0), 1.0) * width
    full = int(cells)
    partial = _EIGHTHS[int((cells - full) * 8)] if full < width else ""
    return ("█" * full + partial).ljust(width)


DASH = "–"


def fmt_count(n: int | None) -> str:
    """``1,234,567``; ``–`` when unknown."""
    return DASH if n is None else f"{n:,}"


def fmt_si(x: float | None) -> str:
    """A compact magnitude of at most five characters: ``0.5``, ``12.3``, ``123``, ``12.3k``."""
    if x is None or not math.isfinite(x):
        return DASH
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= limit * 0.9995:  # 999.96 is "1.00k", not "1000"
            return _three_digits(x / limit) + suffix
    return _three_digits(x)


def _three_digits(x: float) -> str:
    if abs(x) >= 99.95:
        return f"{x:.0f}"
    if abs(x) >= 9.995:
        return f"{x:.1f}"
    return f"{x:.2f}" if x else "0"


def fmt_rate(x: float | None) -> str:
    """Events per second: ``12.3k/s``."""
    return DASH if x is None else f"{fmt_si(x)}/s"


def fmt_duration(seconds: float | None) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``1h02m``, ``2d03h``: never more than five characters."""
    if seconds is None or not math.isfinite(seconds):
        return DASH
    s = max(seconds, 0.0)
    if s < 9.95:
        return f"{s:.1f}s"
    whole = round(s)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def fmt_latency(seconds: float | None) -> str:
    """``850µs``, ``3.20ms``, ``18.0ms``, ``1.20s``."""
    if seconds is None or not math.isfinite(seconds):
        return DASH
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1:
        return f"{_three_digits(seconds * 1e3)}ms"
    return f"{_three_digits(seconds)}s"


def fmt_price(price: float | None) -> str:
    """About five significant digits, at least two decimals: ``220.06``, ``1.0845``."""
    if price is None or not math.isfinite(price):
        return DASH
    magnitude = math.floor(math.log10(abs(price))) if price else 0
    decimals = min(8, max(2, 4 - magnitude))
    return f"{price:,.{decimals}f}"


def fmt_percent(fraction: float | None) -> str:
    """A signed percentage with two decimals: ``+0.12%``."""
    if fraction is None or not math.isfinite(fraction):
        return DASH
    return f"{fraction * 100:+.2f}%"


# Figures derived from a snapshot (``Metrics.snapshot()``, plus ``rates`` from the dashboard's
# sampler); a missing field reads as its default.


def part(snap: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """``snap[name]`` if it is a mapping, else an empty one."""
    section = snap.get(name)
    return section if isinstance(section, Mapping) else {}


def run_mode(snap: Mapping[str, Any]) -> str:
    """``live`` or ``replay`` (guessed from the source's fields when the pipeline did not say)."""
    mode = snap.get("mode")
    if mode:
        return str(mode)
    return "replay" if part(snap, "source").get("lines_total") else "live"


def state_name(source: Mapping[str, Any]) -> str:
    """The source's state, spelled as the dashboard shows it (``backing off``)."""
    name = str(source.get("state") or "starting").replace("_", " ").replace("-", " ").lower()
    return "backing off" if name == "backoff" else name


def queued(publisher: Mapping[str, Any]) -> int:
    """Messages produced and neither delivered nor failed yet."""
    if "queued" in publisher:
        return int(publisher["queued"])
    done = publisher.get("delivered", 0) + publisher.get("failed", 0)
    return int(publisher.get("produced", 0) - done)


def event_lag(snap: Mapping[str, Any], now: float) -> float | None:
    """Seconds between the last transformed frame's event time and ``now``."""
    event_ms = part(snap, "transform").get("last_event_ms", 0)
    return now - event_ms / 1000 if event_ms else None


def data_clock(snap: Mapping[str, Any], now: float) -> float:
    """Now on the data's clock: ``now`` live, the recording's time in a replay."""
    event_ms = part(snap, "transform").get("last_event_ms", 0)
    return now if run_mode(snap) == "live" or not event_ms else float(event_ms) / 1000


def latency_quantiles(
    counts: Sequence[int], bounds_ms: Sequence[float]
) -> tuple[float | None, float | None]:
    """Median and 99th percentile in seconds of a latency histogram kept as the publisher keeps
    it (counts per bucket of ``bounds_ms``, the last bucket also holding anything slower); None
    while it is empty or not there."""
    if not bounds_ms or len(counts) != len(bounds_ms):
        return None, None
    inner = bounds_ms[:-1]  # the last bucket is the overflow
    p50, p99 = quantile(inner, counts, 0.5), quantile(inner, counts, 0.99)
    return (None if p50 is None else p50 / 1000), (None if p99 is None else p99 / 1000)


def rate_counters(snap: Mapping[str, Any]) -> dict[str, float]:
    """The growing counters whose rates the dashboard shows.

    ``event_seconds`` (the data's clock, whose rate is the replay speed) is left out until the
    first frame gives it a value.
    """
    src, tr = part(snap, "source"), part(snap, "transform")
    counters = {
        "frames": src.get("frames", 0),
        "lines": src.get("lines_read", 0),
        "ticks": tr.get("ticks", 0),
        "delivered": part(snap, "publisher").get("delivered", 0),
    }
    if event_ms := tr.get("last_event_ms", 0):
        counters["event_seconds"] = event_ms / 1000
    return counters
