"""Bad configuration, the part that is not about reaching Kafka: every mistake gives one
``error:`` line that names the cause and what to do, no traceback, and a non-zero exit where the
tool cannot go on (see the README, "Kafka and guarantees", on the exit status).

A missing API key is covered by ``test_cli_live.py``; an unreachable broker and wrong Kafka
credentials by ``sink/test_broker_outages.py``.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import trio
from trio_websocket import open_websocket_url

from finazon_trio.cli.main import main
from finazon_trio.server.config import DATASETS
from finazon_trio.source.protocol import ServerError, SubscriptionRefused, TickerError, classify

from ..helpers.cli import Cli, run_cli
from ..helpers.kafka import one_broker, unique_topic
from ..helpers.paths import SAMPLE
from ..helpers.server import server
from ..helpers.waiting import wait_until

KEY = "bad-config-test-key-77c2"
#: Real seconds a run that cannot go on may take to say so and exit.
TIMEOUT = 60.0


def run_with_key(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``finazon-trio ARGS`` in ``cwd`` (where it keeps its state), with an API key and lines
    of 80 columns."""
    env = {"FINAZON_API_KEY": KEY, "COLUMNS": "80", "XDG_STATE_HOME": str(cwd)}
    return run_cli(*args, env=env, cwd=cwd, timeout=TIMEOUT)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_clear_error(stderr: str, *phrases: str) -> str:
    """One ``error:`` line containing every phrase; no traceback, no key. Returns the line."""
    assert "Traceback" not in stderr, stderr
    assert KEY not in stderr
    errors = error_lines(stderr)
    assert len(errors) == 1, stderr
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


LIVE = ("live", "--tickers", "AAPL", "--url", "ws://127.0.0.1:1/v1")
REPLAY = ("replay", str(SAMPLE))


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        pytest.param((*REPLAY, "--points", "0"), ["points must be at least 1, not 0"], id="points"),
        pytest.param((*REPLAY, "--speed", "-1"), ["--speed wants 'max' or a positive"], id="speed"),
        pytest.param((*REPLAY, "--speed", "fast"), ["--speed", "'fast'"], id="speed-word"),
        pytest.param((*REPLAY, "--partitions", "0"), ["partitions must be at least 1"], id="parts"),
        pytest.param(
            (*REPLAY, "--flush-timeout", "-3"),
            ["flush timeout must be a number of seconds, 0 or more, not -3.0"],
            id="flush-timeout",
        ),
        pytest.param(
            (*REPLAY, "--kafka-wait", "nan"), ["wait must be a number of seconds"], id="kafka-wait"
        ),
        pytest.param(
            (*REPLAY, "--kafka-config", "linger.ms"),
            ["--kafka-config wants KEY=VALUE, not 'linger.ms'"],
            id="kafka-config",
        ),
        pytest.param(
            (*REPLAY, "--kafka-config", "[/oops]"),
            ["--kafka-config wants KEY=VALUE, not '[/oops]'"],
            id="kafka-config-brackets",
        ),
        pytest.param((*LIVE, "--frequency", "7x"), ["frequency '7x' is not an interval"], id="f"),
        pytest.param(
            (*LIVE, "--heartbeat-interval", "-1"),
            ["heartbeat interval must be a positive number of seconds"],
            id="heartbeat",
        ),
        pytest.param((*LIVE, "--stale-timeout", "0"), ["stale timeout must be"], id="stale"),
        pytest.param((*LIVE, "--max-backoff", "-1"), ["max backoff must be"], id="backoff"),
        pytest.param((*LIVE, "--max-retries", "-1"), ["max retries must be 0 or more"], id="retry"),
        pytest.param((*LIVE, "--connections", "0"), ["connections must be at least 1"], id="conn"),
        pytest.param(
            ("live", "--tickers", "AAPL", "--url", "https://ws.finazon.io/v1"),
            ["'https://ws.finazon.io/v1' is not a WebSocket URL (ws://... or wss://...)"],
            id="url",
        ),
        pytest.param(("live", "--tickers", " , "), ["--tickers names no ticker"], id="tickers"),
    ],
)
def test_an_invalid_option_is_one_error_line_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    phrases: list[str],
) -> None:
    # In this process, for speed (the console script is ``main``); the endpoint would not
    # answer, so the option must be refused before anything connects.
    monkeypatch.setenv("FINAZON_API_KEY", KEY)
    monkeypatch.setenv("COLUMNS", "80")
    assert main([*args, "--kafka-endpoint", "127.0.0.1:1"]) == 2
    out, err = capsys.readouterr()
    assert_one_clear_error(err, *phrases)
    assert err.count("\n") == 1, "more than the error line"
    assert out == ""


def test_the_console_script_exits_2_with_the_error_line_alone(tmp_path: Path) -> None:
    proc = run_with_key(*REPLAY, "--points", "0", "--kafka-endpoint", "127.0.0.1:1", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "error: points must be at least 1, not 0\n"
    assert proc.stdout == ""


def test_an_unknown_librdkafka_setting_is_named(tmp_path: Path) -> None:
    proc = run_with_key(
        *REPLAY, "--kafka-endpoint", "127.0.0.1:1", "--kafka-config", "lingr.ms=5", cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert_one_clear_error(proc.stderr, "invalid Kafka setting", '"lingr.ms"')


@one_broker
@pytest.mark.parametrize(
    ("place", "cause"),
    [
        pytest.param("missing/rec.jsonl", "No such file or directory", id="no-directory"),
        pytest.param("a-directory", "Is a directory", id="a-directory"),
        pytest.param("a-file/rec.jsonl", "Not a directory", id="under-a-file"),
    ],
)
def test_an_unwritable_recording_path_stops_the_run_with_one_clear_error(
    kafka_bootstrap: str, tmp_path: Path, place: str, cause: str
) -> None:
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "a-file").write_text("not a directory")
    record = tmp_path / place
    proc = run_with_key(
        *LIVE,
        *("--record", record, "--kafka-endpoint", kafka_bootstrap, "--no-dashboard"),
        cwd=tmp_path,
    )
    assert proc.returncode != 0, proc.stderr
    assert_one_clear_error(
        proc.stderr, f"cannot write the recording {record}: {cause}", "choose a path (--record)"
    )


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``serve`` (a subprocess) refusing the tickers NOPE and ZZZZ; yields its port."""
    with Cli(
        *("serve", "--port", "0", "--speed", "20"),
        *("--unknown-ticker", "NOPE", "--unknown-ticker", "ZZZZ"),
        cwd=tmp_path_factory.mktemp("serve"),
    ) as serving:
        yield int(serving.wait_for(r"listening on (\d+)")[1])
        serving.send_signal(signal.SIGINT)
        serving.finish()


def live_cli(port: int, bootstrap: str, tmp_path: Path, *options: str) -> Cli:
    return Cli(
        *("live", "--url", f"ws://127.0.0.1:{port}/v1", "--no-dashboard"),
        *("--kafka-endpoint", bootstrap, "--record", tmp_path / "live.jsonl"),
        *("--price-ticks-topic", unique_topic("bad-ticks")),
        *("--volume-stream-topic", unique_topic("bad-volume")),
        *options,
        cwd=tmp_path,
        env={"FINAZON_API_KEY": KEY},
    )


@one_broker
def test_a_refused_ticker_is_a_warning_and_the_rest_streams(
    kafka_bootstrap: str, refusing_server: int, tmp_path: Path
) -> None:
    tickers = ("--tickers", "AAPL,NOPE,MSFT,ZZZZ", "--connections", "2")
    with live_cli(refusing_server, kafka_bootstrap, tmp_path, *tickers) as cli:
        # Slot 2 (MSFT, ZZZZ) keeps MSFT; slot 1 keeps AAPL.
        cli.wait_for(r"connection \d+ subscribed to 1 tickers: AAPL")
        cli.wait_for(r"connection \d+ subscribed to 1 tickers: MSFT")
        recording = tmp_path / "live.jsonl"  # written at least once a second
        wait_until(
            lambda: all(
                f'\\"s\\":\\"{t}\\"'.encode() in recording.read_bytes() for t in ("AAPL", "MSFT")
            ),
            "bars of AAPL and MSFT recorded",
        )
        cli.send_signal(signal.SIGINT)
        status = cli.finish()
    assert status == 0, cli.tail()
    assert "Finazon refused ticker NOPE: Ticker NOPE is not supported" in cli.stderr
    assert "Finazon refused ticker ZZZZ: Ticker ZZZZ is not supported" in cli.stderr
    assert error_lines(cli.stderr) == []
    summary = cli.summary()
    assert summary["delivered"] == summary["produced"] > 0


@one_broker
@pytest.mark.parametrize("connections", ["1", "2"])
def test_when_every_ticker_is_refused_the_run_ends_with_one_clear_error(
    kafka_bootstrap: str, refusing_server: int, tmp_path: Path, connections: str
) -> None:
    options = ("--tickers", "NOPE,ZZZZ", "--connections", connections)
    with live_cli(refusing_server, kafka_bootstrap, tmp_path, *options) as cli:
        status = cli.finish(TIMEOUT)  # by itself: nothing to wait for
    assert status != 0, cli.tail()
    if connections == "1":
        line = assert_one_clear_error(
            cli.stderr, "Finazon refused every ticker (NOPE: Ticker NOPE is not supported; ZZZZ:"
        )
    else:  # each connection has one of them
        line = assert_one_clear_error(cli.stderr, "Finazon refused every ticker (")
        assert "The other connections go on" in cli.stderr  # the first slot refused
    assert "check --tickers, and that they belong to --dataset" in line
    assert "Not retrying" in line
    assert "apikey=***" in line


@one_broker
def test_an_unknown_dataset_ends_the_run_with_one_clear_error(
    kafka_bootstrap: str, refusing_server: int, tmp_path: Path
) -> None:
    options = ("--tickers", "AAPL,MSFT", "--dataset", "xyz")
    with live_cli(refusing_server, kafka_bootstrap, tmp_path, *options) as cli:
        status = cli.finish(TIMEOUT)
    assert status != 0, cli.tail()
    assert_one_clear_error(
        cli.stderr,
        "Finazon refused the subscription: Dataset xyz is not supported",
        "check --dataset, --frequency and --aggregation",
    )
    # The recording shows what happened: the refusal, then the connection closing.
    lines = [orjson.loads(line) for line in (tmp_path / "live.jsonl").read_bytes().splitlines()]
    assert '"Dataset xyz is not supported"' in lines[-2]["text"]
    assert lines[-1]["reason"].startswith("Finazon refused the subscription")


async def test_the_server_refuses_an_unknown_dataset_and_subscribes_nothing() -> None:
    subscribe = {"event": "subscribe", "tickers": ["AAPL"], "channel": "bars"}
    async with server() as (port, log):
        url = f"ws://127.0.0.1:{port}/v1?apikey={KEY}"
        async with open_websocket_url(url) as ws:
            await ws.send_message(orjson.dumps({**subscribe, "dataset": "xyz"}).decode())
            refusal = orjson.loads(await ws.get_message())
            await ws.send_message(orjson.dumps({**subscribe, "dataset": DATASETS[-1]}).decode())
            ack = orjson.loads(await ws.get_message())
            with trio.fail_after(10):  # the next second of the market
                bar = orjson.loads(await ws.get_message())
    assert refusal == {"status": "error", "message": "Dataset xyz is not supported"}
    assert ack["code"] == "SUCCESS_SUBSCRIPTION"
    assert ack["data"]["tickers"] == ["AAPL"]
    assert ack["data"]["dataset"] == DATASETS[-1]
    assert bar["d"] == DATASETS[-1]
    assert all("xyz" not in text for text in log.sent()[2:])


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("Dataset xyz is not supported", SubscriptionRefused),
        ("Unknown dataset: xyz", SubscriptionRefused),
        ("Frequency 7s is not supported", SubscriptionRefused),
        ("Channel trades is not supported", SubscriptionRefused),
        ("Ticker AAPL is not supported for dataset sip_pro", TickerError),
        ("Too many requests: over 100 a minute", ServerError),
        ("dataset maintenance in progress", ServerError),
    ],
)
def test_a_refused_subscription_is_told_apart_from_other_errors(
    message: str, kind: type[object]
) -> None:
    text = orjson.dumps({"status": "error", "message": message}).decode()
    assert type(classify(text, ("AAPL",))) is kind
