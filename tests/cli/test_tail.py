"""``finazon-trio tail`` as a user runs it: the console script in a subprocess, reading back what
``replay`` published to a real broker; its live chart in a real terminal (tmux)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from finazon_trio import schemas
from finazon_trio.cli.main import main
from finazon_trio.server.synthetic import generate_recording

from ..helpers.cli import command
from ..helpers.cli import run_cli as run
from ..helpers.contract import Expected, by_topic, expected_messages, received_frames
from ..helpers.kafka import free_port, one_broker, produce_all, unique_topic
from ..helpers.paths import ROOT
from ..helpers.waiting import WAIT_TIMEOUT as TIMEOUT

#: 2 tickers x 2 minutes of 1 s updates: 240 frames, 21,840 messages.
TICKERS = ("AAPL", "MSFT")
START_S = 1_731_080_400


def replayed(bootstrap: str, tmp_path: Path) -> tuple[str, str, list[Expected]]:
    """Replay a small recording into fresh topics; the topics and what the contract says they
    hold."""
    recording = generate_recording(
        tmp_path / "rec.jsonl", TICKERS, minutes=2, seed=3, start_s=START_S
    )
    ticks, volume = unique_topic("tail-ticks"), unique_topic("tail-volume")
    done = run(
        "replay", str(recording), "--no-dashboard", "--kafka-endpoint", bootstrap,
        "--price-ticks-topic", ticks, "--volume-stream-topic", volume,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    expected = expected_messages(received_frames(recording), price_topic=ticks, volume_topic=volume)
    return ticks, volume, expected


def parsed(line: str) -> tuple[str, str, str, object]:
    topic, key, when, value = line.split("\t")
    return topic, key, when, orjson.loads(value)


@pytest.fixture(scope="module")
def published(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str, list[Expected]]:
    """One replay for the module's tests, which only read its topics."""
    return replayed(kafka_bootstrap, tmp_path_factory.mktemp("published"))


@one_broker
def test_tail_prints_what_a_replay_published(
    kafka_bootstrap: str, published: tuple[str, str, list[Expected]]
) -> None:
    ticks, volume, expected = published
    # --symbol and --count, from the beginning: the first ticks of MSFT, exactly.
    done = run(
        "tail", "--kafka-endpoint", kafka_bootstrap, "--topic", ticks,
        "--from-beginning", "--symbol", "MSFT", "--count", "7",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    want = [m for m in by_topic(expected, ticks) if m.key == b"MSFT"][:7]
    assert len(lines) == 7
    for line, message in zip(lines, want, strict=True):
        topic, key, when, value = parsed(line)
        assert (topic, key, value) == (ticks, "MSFT", message.value)
        assert when == _iso(message.timestamp)
        schemas.validate("price-tick", value)
    # Two topics at once, every record of both: each line names its topic.
    total = len(expected)
    done = run(
        "tail", "--kafka-endpoint", kafka_bootstrap, "--topic", ticks, "--topic", volume,
        "--from-beginning", "--count", str(total),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == total
    volumes = [parsed(line)[3] for line in lines if line.startswith(volume + "\t")]
    assert volumes == [m.value for m in by_topic(expected, volume)]


@contextlib.contextmanager
def _tail_at_the_end(bootstrap: str, topic: str, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """``tail`` of ``topic`` in its own process, once it says it starts from the end; killed
    when the block ends."""
    child = subprocess.Popen(
        command("tail", "--kafka-endpoint", bootstrap, "--topic", topic, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stderr is not None
        _wait_for_line(child.stderr, "from the end")
        yield child
    finally:
        child.kill()


@one_broker
def test_tail_from_the_end_shows_only_what_comes_after_it_started(kafka_bootstrap: str) -> None:
    """Records already there are skipped, even those of the last batch (Tansu names the start of
    its last batch as the end); what is produced once tail says it is at the end is shown."""
    topic = unique_topic("tail-later")
    earlier = [(topic, b"AAPL", b'{"old": %d}' % n, 1_700_000_000_000, None) for n in range(5)]
    produce_all(kafka_bootstrap, earlier)
    with _tail_at_the_end(kafka_bootstrap, topic, "--count", "2") as child:
        later = [(topic, b"TSLA", b'{"n": %d}' % n, 1_700_000_000_000 + n, None) for n in (1, 2)]
        produce_all(kafka_bootstrap, later)
        out, err = child.communicate(timeout=TIMEOUT)
    assert child.returncode == 0, err
    assert out.splitlines() == [
        f'{topic}\tTSLA\t2023-11-14T22:13:20.001Z\t{{"n": 1}}',
        f'{topic}\tTSLA\t2023-11-14T22:13:20.002Z\t{{"n": 2}}',
    ]


@one_broker
def test_ctrl_c_ends_tail_at_once_with_status_0(kafka_bootstrap: str) -> None:
    topic = unique_topic("tail-idle")
    produce_all(kafka_bootstrap, [(topic, b"AAPL", b"{}", 1_700_000_000_000, None)])
    with _tail_at_the_end(kafka_bootstrap, topic) as child:
        started = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=TIMEOUT)
    assert child.returncode == 0, err
    assert time.monotonic() - started < 5
    assert out == ""
    assert "Traceback" not in err


@one_broker
def test_bad_input_gets_one_clear_line_and_a_non_zero_status(
    kafka_bootstrap: str, published: tuple[str, str, list[Expected]]
) -> None:
    ticks, _, _ = published
    endpoint = ("--kafka-endpoint", kafka_bootstrap)
    cases = [
        (("tail", *endpoint, "--topic", "no-such-topic"), 1, "error: no topic no-such-topic at "),
        (
            ("tail", "--kafka-endpoint", f"127.0.0.1:{free_port()}", "--kafka-wait", "1"),
            1,
            "did not answer within 1 s",
        ),
        (
            ("tail", *endpoint, "--topic", ticks, "--from-beginning", "--symbol", "ZZZZ"),
            1,
            "error: no record of symbol ZZZZ in " + ticks + " (the symbols there: AAPL, MSFT)",
        ),
        (
            ("tail", *endpoint, "--topic", ticks, "--from-beginning", "--chart", "ZZZZ"),
            1,
            "error: no record of symbol ZZZZ",
        ),
        (("tail",), 2, "error: tail needs --kafka-endpoint or KAFKA_ENDPOINT"),
        (("tail", *endpoint, "--count", "0"), 2, "error: --count must be at least 1, not 0"),
        (("schema", "bars"), 2, "error: no schema named 'bars'; the schemas are: price-tick"),
    ]
    for args, status, message in cases:
        done = run(*args)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == status, (args, done.stderr)
        assert len(errors) == 1, (args, done.stderr)
        assert message in errors[0], (args, done.stderr)
        assert "Traceback" not in done.stderr
        if "--chart" not in args:  # the chart draws its (empty) frame first
            assert done.stdout == ""


def test_schema_prints_each_declared_schema_and_lists_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["schema"]) == 0
    listing = capsys.readouterr().out
    assert [line.split("\t")[0] for line in listing.splitlines()] == list(schemas.NAMES)
    for name in schemas.NAMES:
        assert main(["schema", name]) == 0
        assert orjson.loads(capsys.readouterr().out) == schemas.load(name)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (.ci/run installs it)")
@one_broker
def test_the_chart_draws_live_in_a_terminal_and_ctrl_c_ends_it(
    kafka_bootstrap: str, published: tuple[str, str, list[Expected]], tmp_path: Path
) -> None:
    ticks, volume, expected = published
    socket = f"ft-{uuid.uuid4().hex[:8]}"  # a tmux server of this test's own

    def tmux(*args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", socket, *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout

    done = tmp_path / "exit-status"
    pythonpath = os.environ.get("PYTHONPATH")
    prefix = f"env PYTHONPATH={pythonpath} " if pythonpath else ""
    tail = " ".join(
        command(
            "tail", "--kafka-endpoint", kafka_bootstrap, "--topic", ticks, "--topic", volume,
            "--from-beginning", "--chart", "AAPL",
        )
    )  # fmt: skip
    script = f"cd {ROOT} && {prefix}{tail} 2>{tmp_path / 'stderr'}; echo $? > {done}; sleep 600"
    tmux("new-session", "-d", "-s", "chart", "-x", "100", "-y", "30", script)
    try:
        last = by_topic(expected, ticks)
        close = [m.value for m in last if m.key == b"AAPL"][-1]["price"]  # type: ignore[index]
        screen = _wait_for_screen(tmux, "AAPL   last", "ticks and", "15:40", "15:41")
        assert f"last {close:g} at 15:41:59 UTC" in screen, screen
        assert "10,800 ticks and 2 bars kept" in screen, screen
        for drawn in ("█", "•", "┤"):  # candle bodies, ticks, the price axis
            assert drawn in screen, screen
        tmux("send-keys", "-t", "chart", "C-c")
        deadline = time.monotonic() + TIMEOUT
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done.read_text().strip() == "0", (tmp_path / "stderr").read_text()
        assert "Traceback" not in (tmp_path / "stderr").read_text()
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], check=False, timeout=30)


def _wait_for_screen(tmux: object, *needles: str) -> str:
    deadline = time.monotonic() + TIMEOUT
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", "chart")  # type: ignore[operator]
        if all(n in screen for n in needles):
            return str(screen)
        time.sleep(0.2)
    pytest.fail(f"never saw {needles} on screen:\n{screen}")


def _wait_for_line(stream: object, needle: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()  # type: ignore[attr-defined]
        seen.append(line)
        if needle in line:
            return
        if not line:
            break
    pytest.fail(f"never saw {needle!r}: {''.join(seen)}")


def _iso(epoch_ms: int) -> str:
    seconds, ms = divmod(epoch_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"
