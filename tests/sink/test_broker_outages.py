"""Kafka going away and coming back, against Apache Kafka (what the README promises in "Kafka
and guarantees").

Each test has a broker of its own (the ``apache_kafka`` fixture, or one it starts late) to
SIGKILL, stop and restart on the same port and data directory while a replay or a live run
against ``serve`` is in full flight. Afterwards it consumes both topics back and compares them,
message by message, with what the contract oracle (:mod:`tests.helpers.contract`) says the
frames that went through must give: every message exactly once, each symbol's in order. In live
mode the run's own recording says which frames were received.

Steps wait for conditions on the run's metrics (bounded, with a message saying what did not
happen), never for a fixed time, except the few seconds a broker stays down.
"""

from __future__ import annotations

import functools
import json
import resource
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from finazon_trio.observe.metrics import Metrics
from finazon_trio.pipeline import RunResult, run_pipeline
from finazon_trio.recording import header_from_settings, read_header
from finazon_trio.server.synthetic import generate_recording
from finazon_trio.settings import KafkaSettings, LiveSettings, Output, Settings, Subscription
from finazon_trio.source.live import live_source
from finazon_trio.source.replay import replay_source

from ..helpers import waiting
from ..helpers.cli import run_cli
from ..helpers.contract import assert_topic_matches, by_topic, expect
from ..helpers.kafka import ApacheKafka, consume_all, create_topic, free_port, unique_output
from ..helpers.paths import SAMPLE
from ..helpers.server import server

KEY = "outage-test-key-77c1"
#: Real seconds one step may take: a broker restart on a busy 2-core machine included.
STEP_TIMEOUT = 150.0
#: Real seconds a broker stays down after a SIGKILL before it is started again.
DOWN_FOR = 3.0
#: Generous: the flush deadline must not be what ends these runs.
FLUSH_TIMEOUT = 300.0

Scenario = Callable[[Metrics], Awaitable[None]]
#: Waits for a condition on the run's metrics, for as long as a step may take.
until = functools.partial(waiting.until, timeout=STEP_TIMEOUT)


@pytest.fixture
def output() -> Output:
    return unique_output("outage")


async def assert_kafka_holds(bootstrap: str, recording: Path, output: Output) -> int:
    """Both topics hold exactly the contract's messages for the recording's ``in`` frames, each
    once, in order per symbol; returns how many messages that is."""
    expected = expect(recording, output)
    for topic in (output.price_ticks_topic, output.volume_stream_topic):
        want = by_topic(expected, topic)
        assert want, f"nothing expected in {topic}"
        records = await trio.to_thread.run_sync(consume_all, bootstrap, topic, len(want))
        assert_topic_matches(records, want)
    return len(expected)


async def kill_and_restart(kafka: ApacheKafka, metrics: Metrics) -> int:
    """SIGKILL the broker, keep it down :data:`DOWN_FOR` seconds, start it again (same port,
    same data); returns how many messages were delivered when it was killed."""
    delivered = metrics.publisher.delivered
    await trio.to_thread.run_sync(kafka.kill)
    await trio.sleep(DOWN_FOR)
    await trio.to_thread.run_sync(kafka.start)
    return delivered


async def test_a_broker_killed_during_a_replay_loses_and_duplicates_nothing(
    apache_kafka: ApacheKafka, tmp_path: Path, output: Output
) -> None:
    tickers = [f"K{i:02d}" for i in range(8)]
    # Recorded now: Kafka's retention (7 days) would delete older records while the test runs.
    path = generate_recording(tmp_path / "rec.jsonl", tickers, minutes=2, seed=5)
    total = len(expect(path, output))  # 960 frames: 87,360 messages
    killed_at: list[int] = []

    async def outage(metrics: Metrics) -> None:
        await until(lambda: metrics.publisher.delivered >= total // 5, "a fifth delivered")
        assert metrics.source.state == "replaying", "the replay is over: not mid-flight"
        killed_at.append(await kill_and_restart(apache_kafka, metrics))

    settings = Settings(
        subscription=read_header(path).subscription(),
        output=output,
        kafka=KafkaSettings(endpoint=apache_kafka.bootstrap, flush_timeout=FLUSH_TIMEOUT),
        dashboard=False,
    )
    metrics = Metrics(mode="replay")
    # Paced at 12 times the recorded speed: 10 s, so that the kill lands mid-flight.
    source = functools.partial(replay_source, path, metrics=metrics.source, speed=12.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outage, metrics)
        result = await run_pipeline(settings, source, metrics, handle_signals=False)

    assert result.ok, result
    assert result.delivered == total
    assert killed_at[0] < total
    assert await assert_kafka_holds(apache_kafka.bootstrap, path, output) == total


@attrs.frozen
class LiveRun:
    result: RunResult
    metrics: Metrics
    recording: Path


async def run_live(
    port: int, bootstrap: str, output: Output, recording: Path, scenario: Scenario, **kafka: Any
) -> LiveRun:
    """Run live against ``serve`` on ``port`` (recording) while ``scenario(metrics)`` runs, then
    stop the source and let the rest drain and flush."""
    settings = Settings(
        subscription=Subscription(tickers=("AAPL", "MSFT", "BRK.B", "TSLA")),
        output=output,
        kafka=KafkaSettings(endpoint=bootstrap, flush_timeout=FLUSH_TIMEOUT, **kafka),
        live=LiveSettings(url=f"ws://127.0.0.1:{port}/v1", api_key=KEY, max_backoff=0.2),
        record=recording,
        dashboard=False,
    )
    metrics = Metrics(mode="live")

    async def source(send: Any) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(live_source, settings, send, metrics.source))
            await scenario(metrics)
            nursery.cancel_scope.cancel()

    header = header_from_settings(settings, settings.live.url)
    result = await run_pipeline(settings, source, metrics, header=header, handle_signals=False)
    return LiveRun(result, metrics, recording)


def received(recording: Path) -> int:
    lines = recording.read_text().splitlines()[1:]
    return sum(1 for line in lines if json.loads(line).get("dir") == "in")


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.jsonl"))


def rss_bytes() -> int:
    """This process's resident set size now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


async def test_an_outage_longer_than_the_producer_holds_is_spooled_to_disk(
    apache_kafka: ApacheKafka, tmp_path: Path, output: Output
) -> None:
    """The producer may hold only 2,000 messages: the outage is spooled; memory stays flat."""
    spool_dir = tmp_path / "spool"
    peak: dict[str, int] = {}

    async def outage(metrics: Metrics) -> None:
        pub = metrics.publisher
        await until(lambda: pub.delivered >= 5_000, "5,000 messages delivered")
        await trio.to_thread.run_sync(apache_kafka.stop)
        rss_at_stop = rss_bytes()
        # On top of what the channels and the producer's queue hold (about 48,000 messages).
        await until(lambda: pub.backlog >= 60_000, "a backlog of 60,000 messages")
        segments = await trio.to_thread.run_sync(segment_files, Path(pub.spool_dir))
        peak.update(
            backlog=pub.backlog,
            bytes=pub.backlog_bytes,
            segments=len(segments),
            rss_growth=rss_bytes() - rss_at_stop,
        )
        await trio.to_thread.run_sync(apache_kafka.start)
        await until(lambda: pub.backlog == 0, "the backlog handed to Kafka")
        frames = metrics.source.frames
        await until(lambda: metrics.source.frames >= frames + 100, "100 more frames")

    async with server(speed=30.0) as (port, _):
        run = await run_live(
            port,
            apache_kafka.bootstrap,
            output,
            tmp_path / "live.jsonl",
            outage,
            config=(("queue.buffering.max.messages", "2000"),),
            spool_dir=spool_dir,
        )

    assert run.result.ok, run.result
    assert peak["segments"] >= 1
    # The backlog lived on disk: memory grew by far less than the backlog's size.
    assert peak["rss_growth"] < peak["bytes"] / 2, peak
    assert run.metrics.publisher.spooled >= peak["backlog"]
    assert not any(spool_dir.iterdir()), "the drained spool left files behind"
    assert run.metrics.source.connects == 1
    count = await assert_kafka_holds(apache_kafka.bootstrap, run.recording, output)
    assert count == run.result.delivered


async def test_a_live_run_loses_nothing_to_a_late_broker_nor_to_a_kill(
    tmp_path: Path, output: Output
) -> None:
    """Kafka comes up 5 s after the run started (the frames wait in the spool meanwhile),
    later it is SIGKILLed and restarted (the producer keeps what it had not delivered)."""
    kafka = ApacheKafka(tmp_path / "kafka", free_port())
    seen: dict[str, Any] = {}

    async def timeline(metrics: Metrics) -> None:
        pub = metrics.publisher
        start = trio.current_time()
        await until(lambda: pub.kafka_state == "waiting", "waiting for Kafka, visibly")
        await until(lambda: pub.backlog > 0, "frames spooled while waiting")
        await trio.sleep_until(start + 5.0)
        seen.update(frames=metrics.source.frames, delivered=pub.delivered)
        await trio.to_thread.run_sync(kafka.start)
        await until(lambda: pub.backlog == 0, "the spooled frames handed to Kafka")
        await until(lambda: pub.delivered >= 5_000, "5,000 messages delivered")
        await kill_and_restart(kafka, metrics)
        seen.update(state_after_kill=pub.kafka_state)
        frames = metrics.source.frames
        await until(lambda: pub.delivered >= pub.produced > 0, "everything delivered again")
        await until(lambda: metrics.source.frames >= frames + 100, "100 more frames")

    try:
        async with server(speed=20.0) as (port, _):
            run = await run_live(
                port,
                kafka.bootstrap,
                output,
                tmp_path / "live.jsonl",
                timeline,
                wait=STEP_TIMEOUT,
                spool_dir=tmp_path / "spool",
            )
        assert run.result.ok, run.result
        assert seen["frames"] > 0
        assert seen["delivered"] == 0
        assert run.metrics.source.connects == 1  # Kafka's absence never disturbed the socket
        count = await assert_kafka_holds(kafka.bootstrap, run.recording, output)
        assert count == run.result.delivered
    finally:
        await trio.to_thread.run_sync(kafka.stop)


def the_error(stderr: str) -> str:
    """The one ``error:`` line the command printed."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    return errors[0]


def test_a_broker_still_absent_at_the_deadline_is_one_clear_error() -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    run = run_cli(
        "replay", SAMPLE, "--no-dashboard", "--kafka-endpoint", endpoint, "--kafka-wait", "4"
    )
    assert run.returncode != 0
    error = the_error(run.stderr)
    assert f"Kafka at {endpoint} did not answer within 4 s" in error
    assert "Connection refused" in error
    assert "--kafka-wait" in error  # what to do
    assert f"Kafka at {endpoint} does not answer yet" in run.stderr  # it waited, visibly


def test_wrong_kafka_credentials_are_one_clear_error(kafka_bootstrap: str) -> None:
    sasl = [
        f"--kafka-config={setting}"
        for setting in (
            "security.protocol=SASL_PLAINTEXT",
            "sasl.mechanism=PLAIN",
            "sasl.username=nobody",
            "sasl.password=wrong",
        )
    ]
    run = run_cli("replay", SAMPLE, "--no-dashboard", "--kafka-endpoint", kafka_bootstrap, *sasl)
    assert run.returncode != 0
    error = the_error(run.stderr)
    assert f"Kafka at {kafka_bootstrap} refused this client's authentication" in error
    assert "sasl.password" in error  # what to check


async def test_live_past_the_deadline_keeps_what_it_received_for_republish(
    kafka_bootstrap: str, tmp_path: Path, output: Output
) -> None:
    """Kafka never answers: the live run waits, spooling, then exits non-zero, saying where the
    frames it received are; ``republish`` then delivers exactly the contract's messages."""
    endpoint = f"127.0.0.1:{free_port()}"
    spool_dir, recording = tmp_path / "spool", tmp_path / "live.jsonl"
    async with server(speed=20.0) as (port, _):
        run = await trio.to_thread.run_sync(
            functools.partial(
                run_cli,
                *("live", "--no-dashboard", "--tickers", "AAPL,MSFT"),
                *("--url", f"ws://127.0.0.1:{port}/v1"),
                *("--kafka-endpoint", endpoint, "--kafka-wait", "3", "--record", recording),
                *("--spool-dir", spool_dir),
                *("--price-ticks-topic", output.price_ticks_topic),
                *("--volume-stream-topic", output.volume_stream_topic),
                env={"FINAZON_API_KEY": KEY},
            )
        )
    assert run.returncode != 0
    assert f"Kafka at {endpoint} did not answer within 3 s" in the_error(run.stderr)
    (kept,) = spool_dir.iterdir()
    assert f"finazon-trio republish {kept}" in run.stderr

    for topic in (output.price_ticks_topic, output.volume_stream_topic):
        create_topic(kafka_bootstrap, topic)
    again = await trio.to_thread.run_sync(
        run_cli, "republish", kept, "--kafka-endpoint", kafka_bootstrap
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert await assert_kafka_holds(kafka_bootstrap, recording, output) > 0
