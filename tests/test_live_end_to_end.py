"""Live mode end to end: ``serve`` over real loopback sockets → the pipeline → a real broker.

Every run records (``settings.record``), so the recording says which frames the client
received; the contract oracle (:mod:`tests.helpers.contract`) turns those into the messages
Kafka must hold, and the server's log says which frames it sent. The server's time-lapse
``speed`` makes a simulated minute last a few real seconds; runs stop by cancelling the source
once a condition on the metrics holds (the pipeline then drains and flushes as on Ctrl-C).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from finazon_trio.events import SourceEvent
from finazon_trio.observe.metrics import Metrics
from finazon_trio.pipeline import RunResult, run_pipeline
from finazon_trio.recording import header_from_settings
from finazon_trio.server.app import serve
from finazon_trio.server.config import ServerConfig
from finazon_trio.server.session import ServerLog
from finazon_trio.settings import KafkaSettings, LiveSettings, Output, Settings, Subscription
from finazon_trio.source.live import live_source
from finazon_trio.source.replay import replay_source

from .helpers.contract import (
    assert_topic_matches,
    bar_frames,
    by_topic,
    expect,
    json_or_none,
    valid_bar,
)
from .helpers.kafka import Record, consume_topics, free_port, unique_output
from .helpers.server import T0, server

KEY = "e2e-live-secret-9f3a7c"
#: Simulated seconds per real second: 40 bar updates a second per ticker.
SPEED = 40.0
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

    def sent(self, conn: int) -> list[str]:
        """The texts of one connection's ``out`` frames."""
        return [e["text"] for e in self.lines() if e.get("dir") == "out" and e["conn"] == conn]

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


Stop = Callable[[Metrics], Awaitable[None]]


def when(condition: Callable[[Metrics], bool]) -> Stop:
    """A stop function: returns once ``condition(metrics)`` holds."""

    async def wait(metrics: Metrics) -> None:
        while not condition(metrics):  # noqa: ASYNC110 - the condition is on metrics
            await trio.sleep(0.02)

    return wait


async def run_live(settings: Settings, stop: Stop) -> LiveRun:
    """Run the live pipeline until ``await stop(metrics)`` returns, then stop the source and
    let the rest drain; fails the test if that takes longer than :data:`RUN_TIMEOUT`."""
    metrics = Metrics(mode="live")
    reached = False

    async def source(send: trio.MemorySendChannel[SourceEvent]) -> None:
        nonlocal reached
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(live_source, settings, send, metrics.source))
            with trio.move_on_after(RUN_TIMEOUT):
                await stop(metrics)
                reached = True
            nursery.cancel_scope.cancel()

    assert settings.record is not None
    header = header_from_settings(settings, settings.live.url)
    result = await run_pipeline(settings, source, metrics, header=header, handle_signals=False)
    assert reached, f"stop condition not reached within {RUN_TIMEOUT:g} s: {metrics.source}"
    assert result.ok, result
    return LiveRun(result, metrics, settings.record)


async def assert_kafka_holds_the_contract(bootstrap: str, run: LiveRun, output: Output) -> None:
    """Both topics hold exactly the contract's messages for the recorded ``in`` frames."""
    expected = expect(run.recording, output)
    ticks = by_topic(expected, output.price_ticks_topic)
    volumes = by_topic(expected, output.volume_stream_topic)
    assert volumes, "no bar frame was received"
    topics = {output.price_ticks_topic: ticks, output.volume_stream_topic: volumes}
    records = await consume_topics(bootstrap, {t: len(m) for t, m in topics.items()})
    for topic, messages in topics.items():
        assert_topic_matches(records[topic], messages)
    assert run.result.delivered == len(expected)


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


def is_garbage(text: str) -> bool:
    """Neither a valid bar nor a protocol message (flat frames only)."""
    obj = json_or_none(text)
    if not isinstance(obj, dict):
        return True
    return "event" not in obj and "status" not in obj and not valid_bar(obj)


def key_appears_in(path: Path) -> bool:
    return KEY.encode() in path.read_bytes()


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a run writes to default (relative) paths stays in the test's directory."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def output() -> Output:
    return unique_output("live")


async def test_subscribes_refuses_an_unknown_ticker_and_publishes_the_contract(
    kafka_bootstrap: str, tmp_path: Path, output: Output
) -> None:
    """One connection: the subscription goes out, the unknown ticker is refused while the others
    are acknowledged and stream, every frame the server sent is recorded, Kafka holds exactly
    the contract's messages for them, and the recording frames it with ``connected`` /
    ``disconnected`` and never shows the key (not even one given in the URL)."""
    tickers = ("AAPL", "NOPE", "MSFT")
    async with server(speed=SPEED, unknown_tickers=("NOPE",)) as (port, log):
        settings = live_settings(port, kafka_bootstrap, output, tmp_path / "live.jsonl", tickers)
        # A URL that carries the key already (pasted from Finazon's docs): the recording's
        # header must not.
        url = f"{settings.live.url}?apikey={KEY}"
        settings = attrs.evolve(settings, live=attrs.evolve(settings.live, url=url))
        # 70 updates per ticker, a simulated minute and more: the bars roll over.
        run = await run_live(settings, when(lambda m: m.transform.bars >= 2 * 70))

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
    await assert_kafka_holds_the_contract(kafka_bootstrap, run, output)
    assert run.lifecycle() == [(1, "connected", ""), (1, "disconnected", "shutdown")]
    assert run.metrics.source.reconnects == 0
    assert not key_appears_in(run.recording)
    assert "apikey=***" in run.recording.read_text().splitlines()[0]


async def test_forced_drops_lose_and_duplicate_nothing(
    kafka_bootstrap: str, tmp_path: Path, output: Output
) -> None:
    """The server drops every connection (between frames): the client reconnects and subscribes
    again each time, receives every frame the server sent, once, in order, and Kafka holds
    each frame's messages once; each drop is a ``disconnected`` event with its reason."""
    async with server(speed=SPEED, drop_every=0.4) as (port, log):
        settings = live_settings(
            port, kafka_bootstrap, output, tmp_path / "live.jsonl", ("AAPL", "MSFT")
        )
        run = await run_live(settings, when(lambda m: m.source.connects >= 5))

    dropped = log.clients[:-1]  # the last connection was still open when the run stopped
    assert [client.ended for client in dropped] == ["drop"] * len(dropped)
    assert all(len(bar_frames(client.sent)) > 10 for client in dropped)
    # The server drops only between frames, so every frame it sent was received, once.
    sent = [text for client in dropped for text in client.sent]
    received = [text for conn in range(1, len(log.clients)) for text in run.received(conn)]
    assert bar_frames(received) == bar_frames(sent)
    assert_every_frame_sent_arrived(run, log)
    # Every connection subscribed again (the last may not have had the time).
    for client in dropped:
        assert json.loads(client.received[0])["event"] == "subscribe"
        assert json.loads(client.sent[0])["code"] == "SUCCESS_SUBSCRIPTION"
    await assert_kafka_holds_the_contract(kafka_bootstrap, run, output)
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
    """Malformed frames among the bars: each is counted as a reject, the connection stays up,
    and every good frame around them is published."""
    async with server(speed=SPEED, garbage_rate=0.25, seed=7) as (port, log):
        settings = live_settings(
            port, kafka_bootstrap, output, tmp_path / "live.jsonl", ("AAPL", "MSFT")
        )
        run = await run_live(settings, when(lambda m: m.transform.bars >= 120))

    assert_every_frame_sent_arrived(run, log)
    garbage = [text for text in run.received() if is_garbage(text)]
    assert len(garbage) > 10
    rejects = run.metrics.transform.rejects
    assert sum(rejects.values()) == len(garbage)  # each counted, with a reason
    assert "stale" not in rejects
    assert run.metrics.source.connects == 1  # garbage does not break the connection
    await assert_kafka_holds_the_contract(kafka_bootstrap, run, output)
    assert run.metrics.transform.bars == len(bar_frames(run.received()))


async def test_a_stall_is_detected_and_the_client_carries_on(
    kafka_bootstrap: str, tmp_path: Path, output: Output
) -> None:
    """The server goes silent without closing: the stale timeout notices, the client reconnects
    and streams again; the frames sent before each stall were all received and published."""
    async with server(speed=SPEED, stall_after=0.3) as (port, log):
        settings = live_settings(
            port, kafka_bootstrap, output, tmp_path / "live.jsonl", ("AAPL",), stale_timeout=1.0
        )
        run = await run_live(settings, when(lambda m: m.source.connects >= 3))

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
    await assert_kafka_holds_the_contract(kafka_bootstrap, run, output)


async def test_a_recorded_live_run_replays_to_identical_messages(
    kafka_bootstrap: str, tmp_path: Path, output: Output
) -> None:
    """Replaying a live run's recording (reconnects and all) into new topics publishes the very
    same records: keys, values and timestamps, in the same order."""
    async with server(speed=SPEED, drop_every=0.4) as (port, _):
        settings = live_settings(
            port, kafka_bootstrap, output, tmp_path / "live.jsonl", ("AAPL", "MSFT")
        )
        run = await run_live(settings, when(lambda m: m.source.connects >= 3))

    replayed = unique_output("replay")
    metrics = Metrics(mode="replay")
    source = functools.partial(replay_source, run.recording, metrics=metrics.source)
    result = await run_pipeline(
        attrs.evolve(settings, output=replayed, record=None), source, metrics, handle_signals=False
    )
    assert result.ok, result
    assert result.delivered == run.result.delivered
    pairs = {
        output.price_ticks_topic: (replayed.price_ticks_topic, run.metrics.transform.ticks),
        output.volume_stream_topic: (
            replayed.volume_stream_topic,
            run.metrics.transform.volume_messages,
        ),
    }
    counts = {t: n for live, (replay, n) in pairs.items() for t in (live, replay)}
    records = await consume_topics(kafka_bootstrap, counts)
    for live, (replay, _) in pairs.items():
        assert _content(records[replay]) == _content(records[live])  # timestamps included
    assert len({conn for conn, _, _ in run.lifecycle()}) >= 3


def _content(records: list[Record]) -> list[tuple[bytes | None, bytes, int]]:
    return [(r.key, r.value, r.timestamp) for r in records]


def assert_each_disconnection_is_a_gap(run: LiveRun) -> int:
    """Connections follow one another (one slot): every frame falls inside its connection's
    ``connected`` … ``disconnected`` window, and between two windows nothing arrives. Returns
    the number of gaps."""
    open_conn: int | None = None
    last_conn = gaps = 0
    for entry in run.lines():
        if entry.get("event") == "connected":
            assert open_conn is None, f"connection {entry['conn']} opened while {open_conn} was"
            assert entry["conn"] == last_conn + 1
            gaps += last_conn > 0
            open_conn = last_conn = entry["conn"]
        elif entry.get("event") == "disconnected":
            assert entry["conn"] == open_conn
            assert entry["reason"], "a disconnection without a reason"
            open_conn = None
        else:
            assert entry["conn"] == open_conn, f"a frame outside its connection's window: {entry}"
    assert open_conn is None, "the last connection never recorded its end"
    return gaps


async def test_connection_faults_in_turn_reconnect_every_time_and_publish_each_frame_once(
    kafka_bootstrap: str, tmp_path: Path, output: Output
) -> None:
    """Connection faults (the README, "Kafka and guarantees"), in seconds: a server that drops
    every connection and sends garbage, then goes away, then one that stalls every connection
    (found by the stale timeout), also with garbage. The client reconnects every time, and Kafka
    holds exactly the contract's messages for the valid frames it recorded."""
    port = free_port()
    drops = ServerConfig(
        port=port, speed=SPEED, start_time=T0, drop_every=0.4, garbage_rate=0.2, seed=1
    )
    # The second server's market is an hour on: bar times keep increasing across the restart.
    stalls = attrs.evolve(drops, drop_every=None, stall_after=0.3, start_time=T0 + 3600, seed=2)
    logs = ServerLog(), ServerLog()
    settings = live_settings(
        port, kafka_bootstrap, output, tmp_path / "live.jsonl", ("AAPL", "MSFT"), stale_timeout=0.9
    )

    async with trio.open_nursery() as servers:

        async def faults_in_turn(metrics: Metrics) -> None:
            async with trio.open_nursery() as first:
                await first.start(serve, drops, logs[0])
                await when(lambda m: m.source.connects >= 5)(metrics)
                first.cancel_scope.cancel()  # the server goes away, then another comes up
            await servers.start(serve, stalls, logs[1])
            await when(lambda m: m.source.connects >= 8)(metrics)

        run = await run_live(settings, faults_in_turn)
        servers.cancel_scope.cancel()

    assert [client.ended for client in logs[0].clients[:4]] == ["drop"] * 4
    assert [client.ended for client in logs[1].clients[:2]] == ["stall"] * 2
    reasons = Counter(reason for _, event, reason in run.lifecycle() if event == "disconnected")
    assert reasons[LOST] >= 4
    assert reasons["stale: no message for 0.9 s"] >= 2
    source = run.metrics.source
    assert sum(reasons.values()) == source.disconnects == source.connects >= 8
    assert assert_each_disconnection_is_a_gap(run) == source.reconnects == source.connects - 1
    # Every connection subscribed again (the last may not have had the time) and streamed,
    # but the last on each server, which may have been cut short.
    for conn in range(1, source.connects):
        assert json.loads(run.sent(conn)[0])["event"] == "subscribe", conn
    streamed = [conn for conn in range(1, source.connects + 1) if bar_frames(run.received(conn))]
    assert len(streamed) >= source.connects - 2, streamed
    garbage = [text for text in run.received() if is_garbage(text)]
    assert len(garbage) > 5
    assert sum(run.metrics.transform.rejects.values()) == len(garbage)
    await assert_kafka_holds_the_contract(kafka_bootstrap, run, output)
    assert not key_appears_in(run.recording)
