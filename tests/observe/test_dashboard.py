"""The dashboard is a pure function of a snapshot: render snapshots of each state and read them."""

from __future__ import annotations

import functools
import io
import logging
import re
from typing import Any

import pytest
import trio
from rich.console import Console, RenderableType
from rich.style import Style

from finazon_trio.observe.dashboard import log_line, render
from finazon_trio.observe.metrics import Metrics
from finazon_trio.observe.refresh import Sampler, run_dashboard

from ..helpers.metrics import record
from ..helpers.waiting import until

NOW = 1_731_162_665.0  # 2024-11-09 14:31:05 UTC
MINUTE = int(NOW // 60 * 60)
RATES = {"frames": 4.0, "ticks": 360.0, "delivered": 364.0, "lines": 0.0, "event_seconds": 1.0}
PRICES = {"AAPL": 220.06, "GOOGL": 171.33, "MSFT": 415.20}


def live_metrics() -> Metrics:
    """A healthy live run: subscribed, frames flowing, Kafka acknowledging."""
    metrics = Metrics(mode="live", origin="wss://ws.finazon.io/v1?apikey=***")
    metrics.started_at = NOW - 3725
    src = metrics.source
    src.state, src.endpoint = "subscribed", "wss://ws.finazon.io/v1?apikey=***"
    src.connection, src.connects, src.reconnects = 3, 3, 2
    src.frames, src.last_message_ns = 123_456, int((NOW - 0.4) * 1e9)
    src.subscribed = set(PRICES)
    src.disconnects, src.last_disconnect = 2, "ping timeout"
    tr = metrics.transform
    tr.bars, tr.ticks, tr.volume_messages = 123_000, 123_000 * 90, 123_000
    tr.last_event_ms = int((NOW - 0.3) * 1000)
    tr.rejects.update({"stale": 2, "bad_json": 1})
    pub = metrics.publisher
    pub.endpoint = "kafka-1:9092"
    pub.produced = tr.ticks + tr.volume_messages
    pub.delivered, pub.queued = pub.produced - 91, 91
    for i in range(100):
        record(pub.ack_latency, 0.002 + i * 0.0001)  # 2..12 ms
    for symbol, price in PRICES.items():
        for i in range(10):
            close = price + (i - 5) * 0.01 * (1 if symbol != "GOOGL" else -1)
            metrics.tickers.on_bar(symbol, MINUTE, price, close, 90, NOW - 10 + i + 0.7)
    send, _receive = trio.open_memory_channel[int](256)
    for i in range(12):
        send.send_nowait(i)
    metrics.channels.watch("outgoing", send)
    return metrics


def replay_metrics() -> Metrics:
    metrics = Metrics(mode="replay", origin="recordings/sample.jsonl")
    metrics.started_at = NOW - 65
    src = metrics.source
    src.state, src.lines_total, src.lines_read, src.frames = "replaying", 19_823, 12_345, 12_000
    metrics.transform.last_event_ms = 1_699_540_020_000 + 3_000_000
    metrics.publisher.endpoint, metrics.publisher.embedded = "127.0.0.1:39123", True
    metrics.tickers.on_bar("AAPL", 1_699_542_960, 220.0, 219.5, 90, 1_699_543_019.0)
    return metrics


def snap(metrics: Metrics, rates: dict[str, float] | None = None) -> dict[str, Any]:
    metrics.channels.sample()
    snapshot = metrics.snapshot()
    snapshot["rates"] = RATES if rates is None else rates
    return snapshot


def screen(snapshot: dict[str, Any], *, height: int | None = None) -> str:
    console = Console(record=True, width=120)
    console.print(render(snapshot, NOW, height=height))
    return console.export_text()


def style_of(renderable: RenderableType, text: str) -> Style:
    """The style of the first piece of output that reads ``text``."""
    console = Console(width=120)
    for segment in console.render(renderable):
        if segment.text.strip() == text:
            return segment.style or Style()
    raise AssertionError(f"{text!r} is not on the screen")


def border_of(snapshot: dict[str, Any], title: str) -> str | None:
    """The colour of the border of the panel titled ``title``."""
    segments = list(Console(width=120).render(render(snapshot, NOW)))
    at = next(i for i, s in enumerate(segments) if s.text.strip() == title)
    corner = next(s for s in reversed(segments[:at]) if "╭" in s.text)
    return corner.style.color.name if corner.style and corner.style.color else None


def colour(style: Style) -> str | None:
    return style.color.name if style.color else None


def test_healthy_live_run_shows_every_figure_in_green() -> None:
    snapshot = snap(live_metrics())
    text = screen(snapshot)
    assert "LIVE" in text
    assert "wss://ws.finazon.io/v1?apikey=***" in text
    assert "up 1h02m  14:31:05 UTC" in text
    assert "● subscribed" in text
    assert "#3 · 2 reconnects" in text
    assert "0.4s ago" in text
    assert "3 subscribed" in text
    assert "2 · ping timeout" in text
    assert re.findall(r"\S+/s", text) == ["4.00/s", "360/s", "364/s"]
    assert "3 · stale 2, bad_js…" in text  # as much as fits
    assert "12/256" in text
    assert "11,193,000" in text  # produced
    assert "11,192,909" in text  # delivered
    p50 = float(re.findall(r"latency p50 +([\d.]+)ms", text)[0])
    assert p50 == pytest.approx(7.0, rel=0.13)
    for symbol in PRICES:
        assert symbol in text
    assert "3 tickers · times UTC" in text
    assert colour(style_of(render(snapshot, NOW), "● subscribed")) == "green"
    assert [border_of(snapshot, t) for t in ("Connection", "Pipeline", "Kafka")] == ["green"] * 3


def test_ticker_rows_carry_direction_and_sparkline() -> None:
    snapshot = snap(live_metrics())
    text = screen(snapshot)
    aapl = next(line for line in text.splitlines() if line.startswith(" AAPL"))
    googl = next(line for line in text.splitlines() if line.startswith(" GOOGL"))
    assert aapl.split()[1:4] == ["220.10", "+0.02%", "14:31"]
    assert aapl.split()[4:7] == ["10", "900", "0.3s"]
    assert "▁▂▃▃▄▅▆▆▇█" in aapl
    assert "█▇▆▆▅▄▃▃▂▁" in googl
    assert colour(style_of(render(snapshot, NOW), "+0.02%")) == "green"
    assert colour(style_of(render(snapshot, NOW), "-0.02%")) == "red"


def test_backing_off_shows_the_time_until_the_next_try_in_yellow() -> None:
    metrics = live_metrics()
    metrics.source.state = "backing off"
    metrics.source.next_attempt_at = NOW + 3.2
    metrics.source.last_message_ns = int((NOW - 25) * 1e9)
    snapshot = snap(metrics)
    state = "↻ backing off · retry in 3.2s"
    assert state in screen(snapshot)
    assert colour(style_of(render(snapshot, NOW), state)) == "yellow"
    assert colour(style_of(render(snapshot, NOW), "25s ago")) == "yellow"
    assert border_of(snapshot, "Connection") == "yellow"


def test_a_stale_connection_and_a_lagging_pipeline_are_yellow_then_red() -> None:
    metrics = live_metrics()
    metrics.source.state = "stale"
    metrics.transform.last_event_ms = int((NOW - 4) * 1000)
    snapshot = snap(metrics)
    assert "⚠ stale" in screen(snapshot)
    assert colour(style_of(render(snapshot, NOW), "⚠ stale")) == "yellow"
    assert border_of(snapshot, "Pipeline") == "yellow"
    metrics.transform.last_event_ms = int((NOW - 30) * 1000)
    assert border_of(snap(metrics), "Pipeline") == "red"


def test_slots_and_refused_tickers() -> None:
    metrics = live_metrics()
    metrics.source.slot_states = {1: "subscribed", 2: "backing off", 3: "connecting"}
    metrics.source.ticker_errors.update({"NOPE": 1})
    snapshot = snap(metrics)
    text = screen(snapshot)
    assert "● ↻ ◌" in text
    assert "1: NOPE" in text
    assert "refused by the server ×1" in text
    assert colour(style_of(render(snapshot, NOW), "1: NOPE")) == "red"


def test_failing_deliveries_turn_the_kafka_panel_red() -> None:
    metrics = live_metrics()
    metrics.publisher.failed, metrics.publisher.queued = 12, 79
    for _ in range(100):
        record(metrics.publisher.ack_latency, 30.0)
    snapshot = snap(metrics)
    text = screen(snapshot)
    assert "failed" in text
    failed = style_of(render(snapshot, NOW), "12")
    assert (colour(failed), failed.bold) == ("red", True)
    assert border_of(snapshot, "Kafka") == "red"
    p99 = style_of(render(snapshot, NOW), "32.7s")  # in the 27.5 s .. 32.8 s bucket
    assert colour(p99) == "red"
    assert re.search(r"queued +79 ", text)


def test_waiting_for_kafka_and_a_spooled_backlog_are_yellow() -> None:
    metrics = live_metrics()
    metrics.publisher.kafka_state = "waiting"
    metrics.publisher.queued, metrics.publisher.backlog = 79, 60_000
    snapshot = snap(metrics)
    text = screen(snapshot)
    assert "waiting · " in text
    assert re.search(r"queued +79 \+ 60,000 on disk", text)
    assert colour(style_of(render(snapshot, NOW), "79 + 60,000 on disk")) == "yellow"


def test_a_full_channel_shows_where_backpressure_sits() -> None:
    metrics = live_metrics()
    send, _receive = trio.open_memory_channel[int](4)
    for i in range(4):
        send.send_nowait(i)
    metrics.channels.watch("source", send)
    snapshot = snap(metrics)
    assert "↳ source" in screen(snapshot)
    assert "4/4 ▕██████▏" in screen(snapshot)
    assert border_of(snapshot, "Pipeline") == "red"


def test_replay_shows_progress_speed_and_time_remaining() -> None:
    rates = {"frames": 190.0, "ticks": 17_100.0, "delivered": 17_290.0, "lines": 195.0}
    snapshot = snap(replay_metrics(), {**rates, "event_seconds": 47.0})
    text = screen(snapshot)
    assert "REPLAY  recordings/sample.jsonl" in text
    assert "62.3%  12,345/19,823 lines" in text
    assert "×47.0" in text
    assert "eta   38s" in text  # 7,478 lines left at 195 lines/s
    assert "━" in text
    assert "Recording" in text
    assert "Connection" not in text
    assert "2023-11-09 15:17:00" in text
    assert "Kafka (embedded)" in text
    # The ticker's age is on the recording's clock, not the wall clock.
    aapl = next(line for line in text.splitlines() if line.startswith(" AAPL"))
    assert aapl.split()[1:7] == ["219.50", "-0.23%", "15:16", "1", "90", "1.0s"]


def test_a_finished_replay_is_complete() -> None:
    metrics = replay_metrics()
    metrics.source.state, metrics.source.lines_read = "done", 19_823
    text = screen(snap(metrics, {}))
    assert "✔ done" in text
    assert "100.0%  19,823/19,823 lines" in text
    assert "eta  0.0s" in text


def test_starting_with_nothing_yet_renders_dashes() -> None:
    text = screen(snap(Metrics(), {}))
    assert "◌ starting" in text
    assert "waiting for the first bar…" in text
    assert re.search(r"frames in +– ", text)
    assert "0 tickers" in text


def test_an_empty_or_partial_snapshot_still_renders() -> None:
    assert "LIVE" in screen({})
    assert "REPLAY" in screen({"source": {"lines_total": 5}, "transform": None})


def test_the_key_never_shows_even_if_given_unredacted() -> None:
    snapshot = snap(live_metrics())
    snapshot["origin"] = "wss://ws.finazon.io/v1?apikey=s3cr3t"
    snapshot["source"]["endpoint"] = "wss://ws.finazon.io/v1?apikey=s3cr3t&x=1"
    text = screen(snapshot)
    assert "s3cr3t" not in text
    assert "apikey=***" in text


def test_ticker_rows_fit_the_terminal_height() -> None:
    metrics = live_metrics()
    for i in range(50):
        metrics.tickers.on_bar(f"T{i:03d}", MINUTE, 10.0, 10.5, 90, NOW - 1)
    snapshot = snap(metrics)
    text = screen(snapshot, height=30)
    assert len(text.rstrip("\n").splitlines()) == 30
    assert "16 of 53 tickers" in text
    replay = replay_metrics()
    for i in range(50):
        replay.tickers.on_bar(f"T{i:03d}", MINUTE, 10.0, 10.5, 90, NOW - 1)
    assert len(screen(snap(replay), height=25).rstrip("\n").splitlines()) == 25


def test_log_line_has_the_same_figures() -> None:
    line = log_line(snap(live_metrics()), NOW)
    assert line.startswith("live ● subscribed | conn #3 reconnects 2 last message 0.4s ago")
    assert "in 4.00/s ticks 360/s out 364/s bars 123,000 rejects 3" in line
    assert "kafka queued 91 delivered 11,192,909 failed 0 p50 6.92ms p99 13.1ms" in line
    replay = log_line(snap(replay_metrics(), {"event_seconds": 47.0}), NOW)
    assert replay.startswith("replay ▶ replaying | 62.3% of 19,823 lines ×47.0")
    assert "\n" not in line + replay


def test_sampler_adds_rates_from_successive_snapshots() -> None:
    metrics = live_metrics()
    sampler = Sampler(metrics)
    assert sampler.take(NOW)["rates"] == {}
    metrics.source.frames += 40
    metrics.publisher.delivered += 3640
    rates = sampler.take(NOW + 2)["rates"]
    assert rates["frames"] == 20.0
    assert rates["delivered"] == 1820.0
    assert sampler.take(NOW + 2)["channels"]["fill"]["outgoing"] == (12, 256)


async def test_run_dashboard_redraws_its_console_and_logs_go_above_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, height=40)
    handler = logging.StreamHandler(out)
    logging.getLogger().addHandler(handler)
    draw = functools.partial(run_dashboard, live_metrics(), refresh_per_second=50, console=console)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(draw)
            # On the real clock: the console is written from a worker thread.
            await until(
                lambda: out.getvalue().count("Connection") >= 3, "redrawn", timeout=10, poll=0.01
            )
            assert handler.stream is not out, "log lines go through the console while it draws"
            logging.getLogger("finazon_trio.test").warning("a warning while drawing")
            await until(
                lambda: "a warning while drawing" in out.getvalue(),
                "the warning on the console",
                timeout=10,
                poll=0.01,
            )
            nursery.cancel_scope.cancel()
    finally:
        logging.getLogger().removeHandler(handler)
    assert handler.stream is out
    assert "AAPL" in out.getvalue()
    assert capsys.readouterr().out == "", "stdout stays clean"
