"""Shutdown under load, through the console script in a subprocess (the README, "Kafka and
guarantees": Ctrl-C or SIGTERM, a second Ctrl-C).

SIGINT or SIGTERM in the middle of a full-speed replay, SIGTERM in the middle of a live run
against ``serve`` (SIGINT is ``cli/test_cli_live.py``'s): the process flushes, exits 0, its
summary says every produced message was delivered, and Kafka holds exactly the contract's
messages for the frames that went through (a prefix of the recording in replay; in live mode,
the frames its own recording says were received, the recording ending with a whole line). A
second Ctrl-C while a flush cannot finish (the broker is gone) exits at once, non-zero, saying
how many messages were not flushed; a single signal gives up at the flush deadline and says the
same.

The tests wait for conditions (a log line, a Prometheus counter, the recording's growth), never
for a fixed time.
"""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path

import pytest

from finazon_trio.server.synthetic import generate_recording
from finazon_trio.sink.broker import EmbeddedBroker

from .helpers.cli import Cli, output_args
from .helpers.contract import assert_kafka_holds, received_frames
from .helpers.kafka import free_port, unique_topic
from .helpers.waiting import wait_until

T0 = 1_731_080_000
#: Real seconds within which a second Ctrl-C must end the process: far below the flush
#: deadline the process was given (:data:`LONG_FLUSH`).
PROMPT_EXIT = 20.0
LONG_FLUSH = 600
API_KEY = "shutdown-test-key-5b1e"
SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


def scrape(port: int) -> dict[str, float]:
    """The samples of ``--metrics-port``'s ``/metrics``, by name (labels included)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def counter(port: int, name: str) -> float:
    return scrape(port).get(f"finazon_trio_{name}", 0.0)


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_during_a_full_speed_replay_flushes_and_exits_zero(
    kafka_bootstrap: str, tmp_path: Path, signum: signal.Signals
) -> None:
    tickers = [f"T{i:02d}" for i in range(20)]
    path = generate_recording(tmp_path / "big.jsonl", tickers, minutes=10, seed=4, start_s=T0)
    frames = received_frames(path)  # the acknowledgement, then 12,000 bar frames
    ticks, volumes = unique_topic("stop-ticks"), unique_topic("stop-volume")
    with Cli("replay", path, *output_args(kafka_bootstrap, ticks, volumes), cwd=tmp_path) as cli:
        port = cli.metrics_port()
        wait_until(lambda: counter(port, "messages_produced_total") >= 20_000, "under load")
        cli.send_signal(signum)
        assert cli.finish() == 0, cli.tail()
    assert f"{signum.name}: stopping the source, flushing Kafka" in cli.stderr
    summary = cli.summary()
    assert summary["delivered"] == summary["produced"]
    assert summary["failed"] == 0
    went_through = summary["frames received"]
    assert went_through < len(frames), "the replay ended before the signal: not under load"
    held = assert_kafka_holds(kafka_bootstrap, frames[:went_through], ticks, volumes)
    assert held == summary["produced"]


def test_sigterm_during_a_live_run_flushes_records_whole_lines_and_exits_zero(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """SIGTERM (what a service manager sends) to a live run on two connections; SIGINT is
    ``cli/test_cli_live.py``'s."""
    recording = tmp_path / "live.jsonl"
    ticks, volumes = unique_topic("live-stop-ticks"), unique_topic("live-stop-volume")
    with Cli("serve", "--port", "0", "--speed", "20", "--seed", "6", cwd=tmp_path) as server:
        port = int(server.wait_for(r"listening on (\d+)")[1])
        live = Cli(
            *("live", "--tickers", "AAPL,MSFT,GOOGL,BRK.B,BTC/USDT", "--connections", "2"),
            *("--url", f"ws://127.0.0.1:{port}/v1", "--record", recording),
            *output_args(kafka_bootstrap, ticks, volumes),
            cwd=tmp_path,
            env={"FINAZON_API_KEY": API_KEY},
        )
        with live:
            # The recorder writes at least once a second: wait for a few seconds of bars.
            wait_until(
                lambda: recording.exists() and recording.read_bytes().count(b'"dir":"in"') > 300,
                "300 frames recorded",
            )
            live.send_signal(signal.SIGTERM)
            assert live.finish() == 0, live.tail()
        server.send_signal(signal.SIGINT)
        server.finish()
    assert "SIGTERM: stopping the source, flushing Kafka" in live.stderr
    text = recording.read_text()
    assert text.endswith("\n"), "the recording does not end with a complete line"
    entries = [json.loads(line) for line in text.splitlines()[1:]]  # every line whole JSON
    last_events = {e["conn"]: (e["event"], e["reason"]) for e in entries if "event" in e}
    assert last_events == {1: ("disconnected", "shutdown"), 2: ("disconnected", "shutdown")}
    assert "event" in entries[-1]
    frames = [(e["t_ns"], e["text"]) for e in entries if e.get("dir") == "in"]
    summary = live.summary()
    assert summary["frames received"] == len(frames)
    assert summary["delivered"] == summary["produced"]
    assert assert_kafka_holds(kafka_bootstrap, frames, ticks, volumes) == summary["produced"]


def start_paced_replay(tmp_path: Path, bootstrap: str, *options: str) -> Cli:
    """A replay at the recorded pace (about 1,800 messages a second): it runs for minutes."""
    tickers = [f"P{i:02d}" for i in range(20)]
    path = generate_recording(tmp_path / "paced.jsonl", tickers, minutes=5, seed=9, start_s=T0)
    topics = unique_topic("cut-ticks"), unique_topic("cut-volume")
    args = ["--speed", "1", *output_args(bootstrap, *topics), *options]
    return Cli("replay", path, *args, cwd=tmp_path)


def stop_kafka_under_load(cli: Cli, broker: EmbeddedBroker) -> int:
    """Once Kafka has acknowledged messages, stop it and wait until messages pile up in the
    producer; returns the metrics port."""
    port = cli.metrics_port()
    wait_until(lambda: counter(port, "messages_delivered_total") > 0, "a first delivery")
    broker.stop()
    wait_until(lambda: counter(port, "messages_queued") >= 2_000, "messages waiting for Kafka")
    return port


def test_a_second_ctrl_c_exits_at_once_and_says_what_was_not_flushed(tmp_path: Path) -> None:
    with EmbeddedBroker() as broker:  # this test's own, to stop mid-run
        bootstrap = broker.bootstrap
        cli = start_paced_replay(tmp_path, bootstrap, "--flush-timeout", str(LONG_FLUSH))
        with cli:
            stop_kafka_under_load(cli, broker)
            cli.send_signal(signal.SIGINT)
            pending = int(cli.wait_for(r"flushing (\d+) messages to Kafka")[1])
            cli.send_signal(signal.SIGINT)
            status = cli.finish(PROMPT_EXIT)
    assert pending > 0
    assert status != 0
    assert "SIGINT again: exiting without flushing" in cli.stderr
    match = re.search(r"(\d+) messages were not acknowledged by Kafka before exit", cli.stderr)
    assert match is not None, cli.tail()
    summary = cli.summary()
    unflushed = int(match[1])
    assert unflushed == summary["produced"] - summary["delivered"] - summary["failed"] > 0
    assert "Traceback" not in cli.stderr


def test_a_flush_that_cannot_finish_stops_at_its_deadline_and_says_so(tmp_path: Path) -> None:
    with EmbeddedBroker() as broker:
        cli = start_paced_replay(tmp_path, broker.bootstrap, "--flush-timeout", "1")
        with cli:
            stop_kafka_under_load(cli, broker)
            cli.send_signal(signal.SIGTERM)
            status = cli.finish()  # Kafka never comes back: only the deadline ends the flush
    assert status != 0
    match = re.search(r"(\d+) messages were not acknowledged by Kafka before exit", cli.stderr)
    assert match is not None, cli.tail()
    summary = cli.summary()
    assert int(match[1]) == summary["produced"] - summary["delivered"] - summary["failed"] > 0
    assert "Traceback" not in cli.stderr


def test_ctrl_c_while_waiting_for_kafka_at_start_stops_at_once(tmp_path: Path) -> None:
    path = generate_recording(tmp_path / "rec.jsonl", ["AAPL"], minutes=1, start_s=T0)
    nobody = f"127.0.0.1:{free_port()}"
    options = ("--kafka-endpoint", nobody, "--kafka-wait", str(LONG_FLUSH), "--no-dashboard")
    with Cli("replay", path, *options, cwd=tmp_path) as cli:
        cli.wait_for(r"does not answer yet")
        cli.send_signal(signal.SIGINT)
        status = cli.finish(PROMPT_EXIT)
    assert status == 0, cli.tail()  # nothing was produced, so nothing was lost
    assert "SIGINT: stopping; nothing was published yet" in cli.stderr
    assert "again" not in cli.stderr
    assert cli.summary()["produced"] == 0
