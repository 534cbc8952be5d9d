"""``finazon-trio live`` as a user runs it: the console script in a subprocess, against ``serve``.

``python -m finazon_trio`` runs in a child process; the server runs in the test (its log counts
connections exactly) or, for the README's walkthrough, as a second child process. One broker is
enough here: these tests are about the command, not the broker.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import attrs
import pytest
import trio

from ..helpers.cli import command
from ..helpers.contract import (
    assert_topic_matches,
    bar_frames,
    by_topic,
    expected_messages,
    received_frames,
)
from ..helpers.kafka import consume_topics, free_port, one_broker, unique_topic
from ..helpers.server import server
from ..helpers.waiting import until

KEY = "cli-live-secret-5be1d0"
#: Real seconds a child process may take to do what the test waits for.
TIMEOUT = 60.0


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a child: no Finazon key and no Kafka endpoint unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("FINAZON_API_KEY", "KAFKA_ENDPOINT")}
    return env | extra


def live_args(port: int, *extra: str, query: str = "") -> list[str]:
    url = f"ws://127.0.0.1:{port}/v1{query}"
    return ["live", "--tickers", "AAPL,MSFT", "--url", url, "--no-dashboard", *extra]


def summary(stderr: str) -> dict[str, int]:
    """The figures of the end-of-run summary table (``│ delivered │ 1,234 │``)."""
    rows = re.findall(r"^│ ([a-z :_]+?)\s+│\s+([\d,]+) │$", stderr, re.MULTILINE)
    return {name: int(count.replace(",", "")) for name, count in rows}


@attrs.define
class Child:
    """A child process started in a nursery, its output collected as it comes."""

    process: trio.Process
    stdout: bytearray = attrs.field(factory=bytearray)
    stderr: bytearray = attrs.field(factory=bytearray)
    _drained: trio.Event = attrs.field(factory=trio.Event)

    async def collect(self) -> None:
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_into, self.process.stdout, self.stdout)
            nursery.start_soon(_read_into, self.process.stderr, self.stderr)
        self._drained.set()

    def text(self) -> str:
        return self.stderr.decode(errors="replace")

    async def exit_status(self) -> int:
        """Wait for the exit (and the last output); fail after :data:`TIMEOUT` seconds."""
        with trio.move_on_after(TIMEOUT):
            status = await self.process.wait()
            await self._drained.wait()
            return status
        raise AssertionError(f"still running after {TIMEOUT:g} s:\n{self.text()[-3000:]}")


async def _read_into(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    async for chunk in stream:
        into += chunk


async def start(nursery: trio.Nursery, args: list[str], env: dict[str, str], cwd: Path) -> Child:
    """Start ``finazon-trio ARGS`` in ``cwd`` (where anything it writes by default goes)."""
    run = functools.partial(
        trio.run_process,
        command(*args),
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        check=False,
    )
    child = Child(await nursery.start(run))
    nursery.start_soon(child.collect)
    return child


def test_a_missing_api_key_fails_clearly_before_anything_connects(tmp_path: Path) -> None:
    """No key (or a blank one): exit status 2 and one clear line, before the tool contacts the
    WebSocket URL or Kafka (both point at a listener that must see no connection)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        for env in (cli_env(), cli_env(FINAZON_API_KEY="  ")):
            proc = subprocess.run(
                command(*live_args(port, "--kafka-endpoint", f"127.0.0.1:{port}")),
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
            assert proc.returncode == 2, proc.stderr
            assert "FINAZON_API_KEY is not set" in proc.stderr
            assert "Traceback" not in proc.stderr
        # Neither the WebSocket URL nor the Kafka endpoint (the same listener) was contacted.
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()


@one_broker
async def test_a_refused_key_exits_non_zero_after_one_attempt(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The server refuses the key: the command exits 1 on its own, saying the key was refused,
    after exactly one connection attempt."""
    async with server(reject_auth=True) as (port, log), trio.open_nursery() as nursery:
        env = cli_env(FINAZON_API_KEY=KEY)
        args = live_args(port, "--kafka-endpoint", kafka_bootstrap)
        child = await start(nursery, args, env, tmp_path)
        status = await child.exit_status()
    stderr = child.text()
    assert status == 1, stderr
    assert "error: Finazon refused the API key" in stderr
    assert "check FINAZON_API_KEY" in stderr
    assert "Traceback" not in stderr
    assert KEY not in stderr
    assert [client.ended for client in log.clients] == ["rejected"]  # one attempt, no retry


@one_broker
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
async def test_sigint_flushes_kafka_and_the_recording_and_exits_zero(
    kafka_bootstrap: str, tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C (or the terminal closing: SIGHUP) during a live run: exit 0, the summary shows
    delivered == produced, the recording ends with a complete line (the last
    ``disconnected``), and Kafka holds the contract's messages for every frame recorded."""
    record = tmp_path / "live.jsonl"
    ticks, volume = unique_topic("cli-ticks"), unique_topic("cli-volume")
    async with server(speed=20.0) as (port, log), trio.open_nursery() as nursery:
        args = live_args(
            port,
            *("--kafka-endpoint", kafka_bootstrap, "--record", str(record)),
            *("--price-ticks-topic", ticks, "--volume-stream-topic", volume),
            query=f"?apikey={KEY}",  # a URL that carries the key as well: it must not leak
        )
        child = await start(nursery, args, cli_env(FINAZON_API_KEY=KEY), tmp_path)
        await until(lambda: len(bar_frames(log.sent())) >= 60, "60 bar frames sent")
        child.process.send_signal(signum)
        status = await child.exit_status()
    stderr = child.text()
    assert status == 0, stderr[-3000:]
    assert f"{signum.name}: stopping the source, flushing Kafka" in stderr
    figures = summary(stderr)
    assert figures["delivered"] == figures["produced"] > 0, figures
    assert figures["failed"] == 0
    assert child.stdout == b""
    assert KEY not in stderr
    text = record.read_text()
    assert text.endswith("\n"), "the recording does not end with a complete line"
    last = json.loads(text.splitlines()[-1])
    assert (last.get("event"), last.get("reason")) == ("disconnected", "shutdown"), last
    assert KEY not in text
    frames = received_frames(record)
    assert [t for _, t in frames] == log.clients[0].sent[: len(frames)]
    expected = expected_messages(frames, price_topic=ticks, volume_topic=volume)
    assert figures["delivered"] == len(expected)
    topics = {ticks: by_topic(expected, ticks), volume: by_topic(expected, volume)}
    records = await consume_topics(kafka_bootstrap, {t: len(m) for t, m in topics.items()})
    for topic, messages in topics.items():
        assert_topic_matches(records[topic], messages)


def recorded_bars(path: Path) -> int:
    """Bar frames in the recording so far (0 before it exists)."""
    return len(bar_frames([text for _, text in received_frames(path)])) if path.exists() else 0


async def test_the_readme_walkthrough_serve_in_one_process_live_in_another(
    tmp_path: Path,
) -> None:
    """``finazon-trio serve`` in one terminal, ``finazon-trio live --url ws://127.0.0.1:PORT/v1``
    in another (any key, the embedded broker), Ctrl-C in each."""
    port, record = free_port(), tmp_path / "walkthrough.jsonl"
    async with trio.open_nursery() as nursery:
        serve = ["serve", "--port", str(port), "--speed", "10"]
        serving = await start(nursery, serve, cli_env(), tmp_path)
        url = f"ws://127.0.0.1:{port}/v1"
        await until(lambda: f"server on {url}" in serving.text(), "the server listening")
        env = cli_env(FINAZON_API_KEY="demo")
        live = await start(nursery, live_args(port, "--record", str(record)), env, tmp_path)
        await until(lambda: recorded_bars(record) >= 20, "20 bar frames recorded")
        live.process.send_signal(signal.SIGINT)
        live_status = await live.exit_status()
        serving.process.send_signal(signal.SIGINT)
        serve_status = await serving.exit_status()
    stderr = live.text()
    assert live_status == 0, stderr[-3000:]
    assert "started the embedded in-memory broker" in stderr
    assert "subscribed to 2 tickers: AAPL, MSFT" in stderr
    figures = summary(stderr)
    assert figures["delivered"] == figures["produced"] >= 20 * 91, figures
    assert serve_status == 0, serving.text()[-3000:]
    assert "client 1 connected" in serving.text()
