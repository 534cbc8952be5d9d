"""The dashboard: a pure function from a metrics snapshot to a rich renderable (the trio task
that redraws it is :mod:`.refresh`).

:func:`render` reads only the snapshot (``Metrics.snapshot()`` plus the ``rates`` a
:class:`~.refresh.Sampler` adds), with defaults for every field, so a missing field shows as ``–``.
Colours carry meaning: green healthy, cyan on the way, yellow backing off or stale, red failing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.constrain import Constrain
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from finazon_trio.observe.metrics import LATENCY_BUCKETS_MS, PRICE_TRAIL, SourceState, TickerRow
from finazon_trio.observe.stats import (
    DASH,
    data_clock,
    event_lag,
    fmt_count,
    fmt_duration,
    fmt_latency,
    fmt_percent,
    fmt_price,
    fmt_rate,
    fmt_si,
    latency_quantiles,
    meter,
    part,
    queued,
    run_mode,
    sparkline,
    state_name,
)
from finazon_trio.redaction import redact

Snapshot = Mapping[str, Any]

#: Seconds of lag, or of silence from a ticker, that turn its figure yellow, then red.
LAG_WARN, LAG_BAD = 2.0, 10.0
AGE_WARN, AGE_BAD = 10.0, 60.0
#: A channel this full is where backpressure sits.
FILL_WARN, FILL_BAD = 0.5, 0.9
#: A p99 delivery latency this high means Kafka is struggling.
LATENCY_WARN, LATENCY_BAD = 1.0, 10.0
SPARK_WIDTH = PRICE_TRAIL
#: The ticker board's columns: (title, width); a negative width aligns left.
TICKER_COLUMNS = (
    *(("Symbol", -10), ("Last", 12), ("Chg", 9), ("Bar", 7), ("Updates", 9), ("Ticks", 12)),
    *(("Age", 7), ("Trend", -SPARK_WIDTH)),
)
#: The ticker board's width: its columns, one space before, two before the trend.
BOARD_WIDTH = sum(abs(width) for _, width in TICKER_COLUMNS) + 3
#: Columns the dashboard spreads over at most, and the relative widths of its three panels.
MAX_WIDTH = 120
PANEL_RATIOS = (4, 3, 3)
#: Lines of the ticker board besides its rows: header, rule, caption.
TABLE_CHROME = 3

GOOD, BUSY, WARN, BAD = "green", "cyan", "yellow", "bold red"
SECTIONS = ("source", "transform", "publisher", "rates")

#: How each source state looks: (symbol, style).
_STATES: dict[str, tuple[str, str]] = {
    SourceState.STARTING: ("◌", BUSY),
    SourceState.CONNECTING: ("◌", BUSY),
    SourceState.SUBSCRIBING: ("◌", BUSY),
    SourceState.SUBSCRIBED: ("●", GOOD),
    SourceState.REPLAYING: ("▶", GOOD),
    SourceState.DONE: ("✔", GOOD),
    SourceState.BACKING_OFF: ("↻", WARN),
    SourceState.STALE: ("⚠", WARN),
    SourceState.STOPPED: ("■", "dim"),
    SourceState.FAILED: ("✖", BAD),
}


def render(snapshot: Snapshot, now: float, *, height: int | None = None) -> RenderableType:
    """The whole dashboard for one snapshot at Unix time ``now``; pure.

    ``height`` (the terminal's) limits the ticker rows so that everything fits.
    """
    parts, lines = _top(snapshot, now)
    max_rows = None if height is None else max(1, height - lines - TABLE_CHROME)
    board = _tickers(snapshot, data_clock(snapshot, now), max_rows)
    return Constrain(Group(*parts, board), MAX_WIDTH)


def _top(snap: Snapshot, now: float) -> tuple[list[RenderableType], int]:
    """The header, the replay's progress line and the panels, and how many lines they take."""
    live = run_mode(snap) == "live"
    kafka = "Kafka (embedded)" if part(snap, "publisher").get("embedded") else "Kafka"
    panels = [
        ("Connection", _connection(snap, now)) if live else ("Recording", _recording(snap)),
        ("Pipeline", _pipeline(snap, now)),
        (kafka, _kafka(snap)),
    ]
    health = [_source_health(snap), _pipeline_health(snap, now), _kafka_health(snap)]
    rows = max(grid.row_count for _, grid in panels)
    top = Table.grid(expand=True, padding=(0, 1))
    for ratio in PANEL_RATIOS:
        top.add_column(ratio=ratio)
    top.add_row(
        *(
            Panel(
                grid,
                title=f"[bold]{title}[/]",
                title_align="left",
                border_style=style,
                box=box.ROUNDED,
                height=rows + 2,
            )
            for (title, grid), style in zip(panels, health, strict=True)
        )
    )
    lines = [_header(snap, now), *([] if live else [_progress(snap)])]
    return [*lines, top], len(lines) + rows + 2


def _header(snap: Snapshot, now: float) -> Table:
    live = run_mode(snap) == "live"
    badge = Text(f" {run_mode(snap).upper()} ", style=f"bold black on {GOOD if live else BUSY}")
    origin = snap.get("origin") or part(snap, "source").get("endpoint") or DASH
    grid = Table.grid(expand=True, padding=(0, 1))
    grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    grid.add_column(justify="right", no_wrap=True)
    clock = datetime.fromtimestamp(now, UTC).strftime("%H:%M:%S")
    uptime = now - snap.get("started_at", now)
    grid.add_row(
        Text.assemble(("finazon-trio", "bold"), " ", badge, " ", (redact(str(origin)), "bold")),
        Text(f"up {fmt_duration(uptime):>5}  {clock} UTC", style="dim"),
    )
    return grid


def _connection(snap: Snapshot, now: float) -> Table:
    src = part(snap, "source")
    grid = _grid()
    grid.add_row("state", _state_text(src, now))
    slots = src.get("slot_states") or {}
    if len(slots) > 1:
        grid.add_row("slots", Text(" ").join(_state_dot(slots[k]) for k in sorted(slots)))
        frames = src.get("slot_frames") or {}
        grid.add_row("frames", " · ".join(f"{fmt_count(frames.get(k, 0))}" for k in sorted(slots)))
    grid.add_row("endpoint", redact(src.get("endpoint") or DASH))
    reconnects = src.get("reconnects", 0)
    count = (f"{reconnects:,} reconnects", WARN if reconnects else "")
    grid.add_row("connection", Text.assemble(f"#{src.get('connection', 0)} · ", count))
    last_ns = src.get("last_message_ns", 0)
    age = now - last_ns / 1e9 if last_ns else None
    grid.add_row("last frame", _aged(age, LAG_WARN * 5, LAG_BAD * 6, suffix=" ago"))
    grid.add_row("tickers", f"{len(src.get('subscribed') or ()):,} subscribed")
    errors: Mapping[str, int] = src.get("ticker_errors") or {}
    refused = Text(f"{len(errors)}: {', '.join(sorted(errors))}", BAD)
    grid.add_row("errors", refused if errors else Text("0", GOOD))
    why = src.get("last_disconnect")
    grid.add_row("drops", f"{src.get('disconnects', 0):,}" + (f" · {why}" if why else ""))
    return grid


def _recording(snap: Snapshot) -> Table:
    src, tr = part(snap, "source"), part(snap, "transform")
    grid = _grid()
    grid.add_row("state", _state_text(src, 0.0))
    origin = snap.get("origin")
    grid.add_row("file", PurePath(origin).name if origin else DASH)
    grid.add_row("lines", f"{src.get('lines_read', 0):,} / {src.get('lines_total', 0):,}")
    grid.add_row("frames", fmt_count(src.get("frames", 0)))
    corrupt = src.get("corrupt_lines", 0)
    grid.add_row("corrupt lines", Text(f"{corrupt:,}", WARN if corrupt else GOOD))
    grid.add_row("speed", _speed(snap))
    event_ms = tr.get("last_event_ms", 0)
    recorded = datetime.fromtimestamp(event_ms / 1000, UTC) if event_ms else None
    grid.add_row("recorded", recorded.strftime("%Y-%m-%d %H:%M:%S") if recorded else DASH)
    return grid


def _pipeline(snap: Snapshot, now: float) -> Table:
    tr, rates = part(snap, "transform"), part(snap, "rates")
    grid = _grid()
    grid.add_row("frames in", fmt_rate(rates.get("frames")))
    grid.add_row("ticks out", fmt_rate(rates.get("ticks")))
    grid.add_row("msgs out", fmt_rate(rates.get("delivered")))
    grid.add_row("bars", fmt_count(tr.get("bars", 0)))
    rejects: Mapping[str, int] = tr.get("rejects") or {}
    total = sum(rejects.values())
    detail = ", ".join(f"{r} {n:,}" for r, n in sorted(rejects.items(), key=lambda i: -i[1]))
    grid.add_row("rejects", Text(f"{total:,} · {detail}", WARN) if total else Text("0", GOOD))
    if tr.get("backfills"):
        grid.add_row("backfill", _backfill_text(tr))
    if run_mode(snap) == "live":
        grid.add_row("lag", _aged(event_lag(snap, now), LAG_WARN, LAG_BAD))
    else:
        grid.add_row("lines in", fmt_rate(rates.get("lines")))
    for name, (used, size) in (part(snap, "channels").get("fill") or {}).items():
        fill = used / size if size else 0.0
        bar = (f"▕{meter(fill, 6)}▏", _level(fill, FILL_WARN, FILL_BAD))
        grid.add_row(f"↳ {name}", Text.assemble(f"{used:,}/{size:,} ", bar))
    return grid


def _kafka(snap: Snapshot) -> Table:
    pub = part(snap, "publisher")
    grid = _grid()
    state = pub.get("kafka_state", "up")
    endpoint = pub.get("endpoint") or DASH
    if state != "up":
        endpoint = f"{state} · {endpoint}"
    grid.add_row("endpoint", Text(endpoint, "" if state == "up" else WARN))
    grid.add_row("produced", fmt_count(pub.get("produced", 0)))
    grid.add_row("delivered", Text(fmt_count(pub.get("delivered", 0)), GOOD))
    backlog = pub.get("backlog", 0)
    grid.add_row(
        "queued",
        Text(f"{fmt_count(queued(pub))} + {backlog:,} on disk", WARN)
        if backlog
        else fmt_count(queued(pub)),
    )
    failed = pub.get("failed", 0)
    grid.add_row("failed", Text(f"{failed:,}", BAD if failed else GOOD))
    p50, p99 = _latency(snap)
    grid.add_row("latency p50", fmt_latency(p50))
    p99_style = _level(p99 or 0.0, LATENCY_WARN, LATENCY_BAD, ok="")
    grid.add_row("latency p99", Text(fmt_latency(p99), p99_style))
    waits = pub.get("backpressure_waits", 0)
    grid.add_row("backpressure", Text(f"{waits:,} waits", WARN if waits else ""))
    return grid


def _tickers(snap: Snapshot, clock: float, max_rows: int | None) -> Group:
    """One line per ticker, in fixed-width columns: plain lines render far faster than a table."""
    rows: Mapping[str, TickerRow] = part(snap, "tickers").get("rows") or {}
    errors: Mapping[str, int] = part(snap, "source").get("ticker_errors") or {}
    symbols = sorted(set(rows) | set(errors))
    shown = symbols if max_rows is None else symbols[:max_rows]
    lines: list[RenderableType] = [_line([(name, "bold") for name, _ in TICKER_COLUMNS])]
    lines.append(Text(" " + "─" * (BOARD_WIDTH - 1), "dim", no_wrap=True, overflow="crop"))
    for symbol in shown:
        row = rows.get(symbol)
        if row is None:
            refused = f"refused by the server ×{errors[symbol]}"
            lines.append(_line([(symbol, BAD), *[(DASH, "")] * 6, (refused, BAD)]))
        else:
            lines.append(_line([(symbol, "bold"), *_ticker_cells(row, clock)]))
    if not symbols:
        lines.append(_line([(DASH, "")] * 7 + [("waiting for the first bar…", "dim")]))
    count = f"{len(symbols):,} ticker{'' if len(symbols) == 1 else 's'} · times UTC"
    caption = f"{len(shown):,} of {count}" if len(shown) < len(symbols) else count
    lines.append(Text(f"{caption:>{BOARD_WIDTH}}", "dim", no_wrap=True, overflow="crop"))
    return Group(*lines)


def _line(cells: list[tuple[str, str]]) -> Text:
    line = Text(" ", no_wrap=True, overflow="ellipsis")
    for k, ((text, style), (_, width)) in enumerate(zip(cells, TICKER_COLUMNS, strict=True)):
        if width < 0:  # left-aligned, set apart from the numbers before it
            line.append(f"{'  ' if k else ''}{text:<{-width}}", style)
        else:
            line.append(f"{text:>{width}}", style)
    return line


def _ticker_cells(row: TickerRow, clock: float) -> list[tuple[str, str]]:
    change = (row.price - row.open) / row.open if row.open else None
    style = GOOD if (change or 0) > 0 else "red" if (change or 0) < 0 else ""
    trend = row.recent[-1] - row.recent[0] if row.recent else 0.0
    age = clock - row.updated_at
    return [
        (fmt_price(row.price), style),
        (fmt_percent(change), style),
        (datetime.fromtimestamp(row.bar_time, UTC).strftime("%H:%M"), ""),
        (fmt_count(row.updates), ""),
        (fmt_count(row.ticks), ""),
        (fmt_duration(age), _level(age, AGE_WARN, AGE_BAD, ok="")),
        (sparkline(row.recent, SPARK_WIDTH), GOOD if trend > 0 else "red" if trend < 0 else ""),
    ]


def _progress(snap: Snapshot) -> Table:
    src, rates = part(snap, "source"), part(snap, "rates")
    read, total = src.get("lines_read", 0), src.get("lines_total", 0)
    per_second = rates.get("lines")
    left = max(total - read, 0)
    eta = 0.0 if total and not left else left / per_second if per_second else None
    grid = Table.grid(expand=True, padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(ratio=1)
    grid.add_column(justify="right", no_wrap=True)
    grid.add_row(
        Text("replay", "bold"),
        ProgressBar(total=max(total, 1), completed=read, complete_style=BUSY, finished_style=GOOD),
        Text(
            f"{read / total if total else 0:6.1%}  {read:,}/{total:,} lines  "
            f"{fmt_rate(per_second):>8}  {_speed(snap):>6}  eta {fmt_duration(eta):>5}"
        ),
    )
    return grid


def _backfill_text(tr: Mapping[str, Any]) -> Text:
    """Backfills after disconnects: minutes filled, gap records, and those still waiting."""
    gaps = tr.get("gaps", 0)
    text = (
        f"{tr.get('backfilled_bars', 0):,} min filled · {gaps:,} gaps "
        f"({tr.get('gap_minutes', 0):,} min) · {tr.get('backfilling', 0)} waiting"
    )
    return Text(text, WARN if gaps else GOOD)


def log_line(snapshot: Snapshot, now: float) -> str:
    """The dashboard's main figures as one log line (for runs without a terminal)."""
    src, tr, pub, rates = (part(snapshot, name) for name in SECTIONS)
    mode = run_mode(snapshot)
    parts = [f"{mode} {_state_text(src, now).plain}"]
    if mode == "live":
        last_ns = src.get("last_message_ns", 0)
        age = fmt_duration(now - last_ns / 1e9) if last_ns else DASH
        parts.append(
            f"conn #{src.get('connection', 0)} reconnects {src.get('reconnects', 0):,} "
            f"last message {age} ago lag {fmt_duration(event_lag(snapshot, now))}"
        )
    else:
        read, total = src.get("lines_read", 0), src.get("lines_total", 0)
        parts.append(f"{read / total if total else 0:.1%} of {total:,} lines {_speed(snapshot)}")
    rejects = sum((tr.get("rejects") or {}).values())
    parts.append(
        f"in {fmt_rate(rates.get('frames'))} ticks {fmt_rate(rates.get('ticks'))} "
        f"out {fmt_rate(rates.get('delivered'))} bars {tr.get('bars', 0):,} rejects {rejects:,}"
    )
    if tr.get("backfills"):
        parts.append(f"backfill {_backfill_text(tr).plain}")
    p50, p99 = _latency(snapshot)
    parts.append(
        f"kafka queued {fmt_count(queued(pub))} delivered {pub.get('delivered', 0):,} "
        f"failed {pub.get('failed', 0):,} p50 {fmt_latency(p50)} p99 {fmt_latency(p99)}"
    )
    return " | ".join(parts)


# Health: the colour of each panel's border.


def _source_health(snap: Snapshot) -> str:
    return _STATES.get(state_name(part(snap, "source")), ("", WARN))[1]


def _pipeline_health(snap: Snapshot, now: float) -> str:
    styles = [GOOD]
    if run_mode(snap) == "live" and (lag := event_lag(snap, now)) is not None:
        styles.append(_level(lag, LAG_WARN, LAG_BAD))
    for used, size in (part(snap, "channels").get("fill") or {}).values():
        styles.append(_level(used / size if size else 0.0, FILL_WARN, FILL_BAD))
    return max(styles, key=[GOOD, WARN, BAD].index)


def _kafka_health(snap: Snapshot) -> str:
    pub = part(snap, "publisher")
    if pub.get("failed", 0):
        return BAD
    if not pub.get("endpoint"):
        return BUSY
    return _level(_latency(snap)[1] or 0.0, LATENCY_WARN, LATENCY_BAD)


def _latency(snap: Snapshot) -> tuple[float | None, float | None]:
    """Median and p99 from produce() to Kafka's acknowledgement, in seconds."""
    return latency_quantiles(part(snap, "publisher").get("ack_latency") or (), LATENCY_BUCKETS_MS)


def _speed(snap: Snapshot) -> str:
    speed = part(snap, "rates").get("event_seconds")
    return f"×{fmt_si(speed)}" if speed is not None else DASH


def _state_text(src: Mapping[str, Any], now: float) -> Text:
    name = state_name(src)
    symbol, style = _STATES.get(name, ("?", WARN))
    text = Text(f"{symbol} {name}", style)
    retry_at = src.get("next_attempt_at")
    if name == SourceState.BACKING_OFF and retry_at:
        text.append(f" · retry in {fmt_duration(retry_at - now)}")
    return text


def _state_dot(state: str) -> Text:
    symbol, style = _STATES.get(state_name({"state": state}), ("?", WARN))
    return Text(symbol, style)


def _level(value: float, warn: float, bad: float, *, ok: str = GOOD) -> str:
    return BAD if value >= bad else WARN if value >= warn else ok


def _aged(
    seconds: float | None, warn: float, bad: float, *, ok: str = GOOD, suffix: str = ""
) -> Text:
    if seconds is None:
        return Text(DASH)
    return Text(fmt_duration(seconds) + suffix, _level(seconds, warn, bad, ok=ok))


def _grid() -> Table:
    grid = Table.grid(padding=(0, 1), expand=True)
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(justify="right", no_wrap=True, overflow="ellipsis", ratio=1)
    return grid
