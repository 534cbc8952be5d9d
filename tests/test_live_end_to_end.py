"""Live mode end to end: ``serve`` over real loopback sockets → the pipeline → a real broker.

Every run records (``settings.record``), so the recording says which frames the client
received; the contract oracle (:mod:`tests.contract`) turns those into the messages Kafka must
hold, and the server's log says which frames it sent. The server's time-lapse ``speed`` makes a
simulated minute last a few real seconds; runs stop by cancelling the source once a condition
on the metrics holds (the pipeline then drains and flushes as on Ctrl-C).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from finazon_trio.live import live_source
from finazon_trio.metrics import Metrics
from finazon_trio.pipeline import RunResult, run_pipeline
from finazon_trio.recording import header_from_settings
from finazon_trio.replay import replay_source
from finazon_trio.server import ServerLog
from finazon_trio.settings import KafkaSettings, LiveSettings, Output, Settings, Subscription

from .contract import by_topic, valid_bar
from .kafka_helpers import Record, consume_all, unique_topic
from .test_end_to_end import assert_topic_matches, expect
from .test_live import server

KEY = "e2e-live-secret-9f3a7c"
#: Simulated seconds per real second: 20 bar updates a second per ticker.
SPEED = 20.0
#: Real seconds a run may take to reach its stop condition.
RUN_TIMEOUT = 30.0
#: Backoff ceiling (s), so that reconnects come quickly.
MAX_BACKOFF = 0.2
LOST = "connection lost (no closing handshake)"


@attrs.frozen
class LiveRun:
    """A finished live run: how the pipeline ended, its metrics, and its recording."""

    result: RunResult
    metrics: Metrics
    recording: Path

    def lines(self) -> list[dict[str, Any]]:
        """Every entry of the recording after the header (each line must be whole JSON)."""
        text = self.recording.read_text()
        assert text.endswith("\n"), "the recording does not end with a complete line"
        return [json.loads(line) for line in text.splitlines()[1:]]

    def received(self, conn: int | None = None) -> list[str]:
        """The texts of the ``in`` frames, of one connection or of all."""
        return [
            e["text"]
            for e in self.lines()
            if e.get("dir") == "in" and (conn is None or e["conn"] == conn)
        ]

    def lifecycle(self) -> list[tuple[int, str, str]]:
        return [(e["conn"], e["event"], e["reason"]) for e in self.lines() if "event" in e]


def live_settings(
    port: int, bootstrap: str, output: Output, record: Path, tickers: tuple[str, ...], **live: Any
) -> Settings:
    live.setdefault("max_backoff", MAX_BACKOFF)
    return Settings(
        subscription=Subscription(tickers=tickers),
        output=output,
        kafka=KafkaSettings(endpoint=bootstrap),
        live=LiveSettings(url=f"ws://127.0.0.1:{port}/v1", api_key=KEY, **live),
        record=record,
        dashboard=False,
    )


async def run_live(settings: Settings, until: Callable[[Metrics], bool]) -> LiveRun:
    """Run the live pipeline until ``until(metrics)`` holds, then stop the source and let the
    rest drain; fails the test if the condition does not hold within :data:`RUN_TIMEOUT`."""
    metrics = Metrics(mode="live")
    reached = False

    async def source(send: Any) -> None:
        nonlocal reached
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(live_source, settings, send, metrics.source))
            with trio.move_on_after(RUN_TIMEOUT):
                while not until(metrics):  # noqa: ASYNC110 - the condition is on metrics
                    await trio.sleep(0.02)
                reached = True
            nursery.cancel_scope.cancel()

    header = header_from_settings(settings, settings.live.url)
    result = await run_pipeline(settings, source, metrics, header=header, handle_signals=False)
    assert reached, f"stop condition not reached within {RUN_TIMEOUT:g} s: {metrics.source}"
    assert result.ok, result
    assert settings.record is not None
    return LiveRun(result, metrics, settings.record)


def assert_kafka_holds_the_contract(bootstrap: str, run: LiveRun, output: Output) -> int:
    """Both topics hold exactly the contract's messages for the recorded ``in`` frames;
    returns how many messages that is."""
    expected = expect(run.recording, output)
    ticks = by_topic(expected, output.price_ticks_topic)
    volumes = by_topic(expected, output.volume_stream_topic)
    assert volumes, "no bar frame was received"
    assert_topic_matches(consume_all(bootstrap, output.price_ticks_topic, len(ticks)), ticks)
    assert_topic_matches(consume_all(bootstrap, output.volume_stream_topic, len(volumes)), volumes)
    assert run.result.delivered == len(expected)
    return len(expected)


def assert_every_frame_sent_arrived(run: LiveRun, log: ServerLog) -> None:
    """Each connection recorded exactly the frames the server sent it, in order. The last one
    may miss its tail: the client left while the server was still streaming."""
    assert run.metrics.source.connect_failures == 0  # so connection n is the server's client n
    assert len(log.clients) == run.metrics.source.connects
    for number, client in enumerate(log.clients, 1):
        received = run.received(number)
        if number < len(log.clients):
            assert received == client.sent, f"connection {number} lost or gained frames"
        else:
            assert received == client.sent[: len(received)]


def bar_frames(texts: list[str]) -> list[dict[str, Any]]:
    return [obj for obj in map(_json_or_none, texts) if isinstance(obj, dict) and valid_bar(obj)]


def is_garbage(text: str) -> bool:
    """Neither a valid bar nor a protocol message (flat frames only)."""
    obj = _json_or_none(text)
    if not isinstance(obj, dict):
        return True
    return "event" not in obj and "status" not in obj and not valid_bar(obj)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def key_appears_in(path: Path) -> bool:
    return KEY.encode() in path.read_bytes()


@pytest.fixture
def output() -> Output:
    return Output(
        price_ticks_topic=unique_topic("live-ticks"),
        volume_stream_topic=unique_topic("live-volume"),
    )


async def test_subscribes_refuses_an_unknown_ticker_and_publishes_the_contract(
    kafka_bootstrap: str, tmp_path: Path, output: Output
) -> None:
    tickers = ("AAPL", "NOPE", "MSFT")
    async with server(speed=SPEED, unknown_tickers=("NOPE",)) as (port, log):
        settings = live_settings(port, kafka_bootstrap, output, tmp_path / "live.jsonl", tickers)
        # A simulated minute (3 s): the bars roll over (T0 is 40 s before a minute's end).
        run = await run_live(settings, lambda m: m.transform.bars >= 2 * 60)

    entries = run.lines()
    subscribe = json.loads(entries[1]["text"])
    assert entries[1]["dir"] == "out"
    assert (subscribe["event"], subscribe["tickers"]) == ("subscribe", list(tickers))
    replies = [json.loads(text) for text in run.received()[:2]]
    assert replies[0] == {"status": "error", "message": "Ticker NOPE is not supported"}
    assert replies[1]["code"] == "SUCCESS_SUBSCRIPTION"
    assert replies[1]["data"]["tickers"] == ["AAPL", "MSFT"]
    assert run.metrics.source.ticker_errors == {"NOPE": 1}
    bars = bar_frames(run.received())
    assert {bar["s"] for bar in bars} == {"AAPL", "MSFT"}  # the others streamed
    assert len({bar["t"] for bar in bars}) >= 2
    assert_every_frame_sent_arrived(run, log)
    assert_kafka_holds_the_contract(kafka_bootstrap, run, output)
    assert run.lifecycle() == [(1, "connected", ""), (1, "disconnected", "shutdown")]
    assert run.metrics.source.reconnects == 0
    assert not key_appears_in(run.recording)


async def test_forced_drops_lose_and_duplicate_nothing(
    kafka_bootstrap: str, tmp_path: Path, output: Output
) -> None:
    async with server(speed=SPEED, drop_every=0.6) as (port, log):
        settings = live_settings(
            port, kafka_bootstrap, output, tmp_path / "live.jsonl", ("AAPL", "MSFT")
        )
        run = await run_live(settings, lambda m: m.source.connects >= 5)

    assert [client.ended for client in log.clients[:4]] == ["drop"] * 4
    # The server drops only between frames, so every frame it sent was received, once.
    assert_every_frame_sent_arrived(run, log)
    sent_bars = bar_frames(log.sent())
    assert bar_frames(run.received())[: len(sent_bars)] == sent_bars
    assert len(sent_bars) > 4 * 0.6 * SPEED * 2 / 2  # each connection streamed a while
    for client in log.clients[:-1]:  # every connection subscribed again (the last may not
        # have had the time: the run stops as soon as it is open)
        assert json.loads(client.received[0])["event"] == "subscribe"
        assert json.loads(client.sent[0])["code"] == "SUCCESS_SUBSCRIPTION"
    assert_kafka_holds_the_contract(kafka_bootstrap, run, output)
    source = run.metrics.source
    assert source.reconnects == source.connects - 1 >= 4
    assert source.disconnects == source.connects
    expected = [
        (n, event, LOST if event == "disconnected" else "")
        for n in range(1, 5)
        for event in ("connected", "disconnected")
    ]
    assert run.lifecycle()[:8] == expected
    assert run.lifecycle()[-1] == (source.connects, "disconnected", "shutdown")
    assert not key_appears_in(run.recording)


async def test_garbage_is_rejected_and_the_frames_around_it_are_published(
    kafka_bootstrap: str, tmp_path: Path, output: Output
) -> None:
    async with server(speed=SPEED, garbage_rate=0.25, seed=7) as (port, log):
        settings = live_settings(
            port, kafka_bootstrap, output, tmp_path / "live.jsonl", ("AAPL", "MSFT")
        )
        run = await run_live(settings, lambda m: m.transform.bars >= 120)

    assert_every_frame_sent_arrived(run, log)
    garbage = [text for text in run.received() if is_garbage(text)]
    assert len(garbage) > 10
    rejects = run.metrics.transform.rejects
    assert sum(rejects.values()) == len(garbage)  # each counted, with a reason
    assert "stale" not in rejects
    assert run.metrics.source.connects == 1  # garbage does not break the connection
    assert_kafka_holds_the_contract(kafka_bootstrap, run, output)
    assert run.metrics.transform.bars == len(bar_frames(run.received()))


async def test_a_stall_is_detected_and_the_client_carries_on(
    kafka_bootstrap: str, tmp_path: Path, output: Output
) -> None:
    async with server(speed=SPEED, stall_after=0.5) as (port, log):
        settings = live_settings(
            port, kafka_bootstrap, output, tmp_path / "live.jsonl", ("AAPL",), stale_timeout=1.0
        )
        run = await run_live(settings, lambda m: m.source.connects >= 3)

    stale = "stale: no message for 1 s"
    assert run.lifecycle()[:4] == [
        (1, "connected", ""),
        (1, "disconnected", stale),
        (2, "connected", ""),
        (2, "disconnected", stale),
    ]
    assert [client.ended for client in log.clients[:2]] == ["stall", "stall"]
    assert all(len(bar_frames(client.sent)) > 3 for client in log.clients[:2])
    assert_every_frame_sent_arrived(run, log)  # the frames before the stall all arrived
    assert_kafka_holds_the_contract(kafka_bootstrap, run, output)


async def test_a_recorded_live_run_replays_to_identical_messages(
    kafka_bootstrap: str, tmp_path: Path, output: Output
) -> None:
    async with server(speed=SPEED, drop_every=0.8) as (port, _):
        settings = live_settings(
            port, kafka_bootstrap, output, tmp_path / "live.jsonl", ("AAPL", "MSFT")
        )
        run = await run_live(settings, lambda m: m.source.connects >= 3)

    replayed = Output(
        price_ticks_topic=unique_topic("replay-ticks"),
        volume_stream_topic=unique_topic("replay-volume"),
    )
    metrics = Metrics(mode="replay")
    source = functools.partial(replay_source, run.recording, metrics=metrics.source)
    result = await run_pipeline(
        attrs.evolve(settings, output=replayed, record=None), source, metrics, handle_signals=False
    )
    assert result.ok, result
    assert result.delivered == run.result.delivered
    for live_topic, replay_topic in (
        (output.price_ticks_topic, replayed.price_ticks_topic),
        (output.volume_stream_topic, replayed.volume_stream_topic),
    ):
        count = (
            run.metrics.transform.ticks
            if "ticks" in live_topic
            else run.metrics.transform.volume_messages
        )
        live_records = consume_all(kafka_bootstrap, live_topic, count)
        replay_records = consume_all(kafka_bootstrap, replay_topic, count)
        assert _content(replay_records) == _content(live_records)  # timestamps included
    assert len({conn for conn, _, _ in run.lifecycle()}) >= 3


def _content(records: list[Record]) -> list[tuple[bytes | None, bytes, int]]:
    return [(r.key, r.value, r.timestamp) for r in records]
