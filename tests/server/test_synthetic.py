"""The synthetic market and generated recordings, including the shipped sample."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from finazon_trio.errors import ConfigurationError
from finazon_trio.events import Lifecycle, Received, Sent
from finazon_trio.recording import Corrupt, iter_entries, read_header
from finazon_trio.server.synthetic import SyntheticMarket, generate_recording

from ..helpers.paths import SAMPLE

TICKERS = ["AAPL", "MSFT", "GOOGL", "AMZN", "TSLA"]
START = 1_731_079_830  # 2024-11-08T15:30:30Z, mid-minute


def run(market: SyntheticMarket, tickers: list[str], seconds: range) -> dict[str, list[Any]]:
    series: dict[str, list[Any]] = defaultdict(list)
    for second in seconds:
        for frame in market.frames(tickers, second):
            series[frame["s"]].append(frame)
    return series


def check_bars(frames: list[dict[str, Any]], seconds: range, decimals: int | None) -> None:
    """Finazon's 1 s updates of 1 m bars, frame by frame."""
    previous: dict[str, Any] | None = None
    closes: list[float] = []
    for second, frame in zip(seconds, frames, strict=True):
        assert frame["t"] == second - second % 60
        assert frame["l"] <= min(frame["o"], frame["c"])
        assert frame["h"] >= max(frame["o"], frame["c"])
        if decimals is not None:
            for key in "ohlc":
                assert round(frame[key], decimals) == frame[key]
        if previous is None or frame["t"] != previous["t"]:
            if previous is not None:
                assert frame["t"] == previous["t"] + 60
                assert frame["o"] == previous["c"]
            closes = []
        else:
            assert frame["o"] == previous["o"]
            assert frame["v"] >= previous["v"]
            assert frame["h"] >= previous["h"]
            assert frame["l"] <= previous["l"]
        closes.append(frame["c"])
        if frame["t"] != frames[0]["t"]:  # a whole bar: its extremes are what we saw
            assert frame["h"] == max(frame["o"], *closes)
            assert frame["l"] == min(frame["o"], *closes)
        previous = frame


def test_stock_bars_behave_like_finazons() -> None:
    seconds = range(START, START + 600)
    series = run(SyntheticMarket(3), [*TICKERS, "ZZZZ"], seconds)
    for ticker, frames in series.items():
        check_bars(frames, seconds, decimals=2)
        assert all(type(frame["v"]) is int for frame in frames)
        assert len({frame["t"] for frame in frames}) == 11  # a partial bar, 9 whole, a partial
        assert len({frame["c"] for frame in frames}) > 3, ticker  # prices move
        first = frames[0]
        assert {k: first[k] for k in ("d", "p", "ch", "f", "aggr", "s")} == {
            "d": "us_stocks_essential",
            "p": "finazon",
            "ch": "bars",
            "f": "1s",
            "aggr": "1m",
            "s": ticker,
        }


def test_prices_are_plausible() -> None:
    series = run(SyntheticMarket(1), [*TICKERS, "XYZ"], range(START, START + 3600))
    for frames in series.values():
        closes = [frame["c"] for frame in frames]
        assert 5 < closes[0] < 1000
        assert max(closes) / min(closes) < 1.1  # an hour of an ordinary stock
    assert 200 < series["AAPL"][0]["c"] < 260


def test_crypto_tickers_work_too() -> None:
    seconds = range(START, START + 180)
    market = SyntheticMarket(0, dataset="binance")
    frames = run(market, ["BTC/USDT", "ETH/USDT"], seconds)
    for ticker_frames in frames.values():
        check_bars(ticker_frames, seconds, decimals=None)
        assert ticker_frames[0]["d"] == "binance"
        assert any(isinstance(frame["v"], float) for frame in ticker_frames)


def test_the_same_seed_gives_the_same_market_and_another_does_not() -> None:
    seconds = range(START, START + 120)
    assert run(SyntheticMarket(7), TICKERS, seconds) == run(SyntheticMarket(7), TICKERS, seconds)
    assert run(SyntheticMarket(7), TICKERS, seconds) != run(SyntheticMarket(8), TICKERS, seconds)


def test_a_tickers_prices_do_not_depend_on_the_others() -> None:
    seconds = range(START, START + 120)
    alone = run(SyntheticMarket(5), ["MSFT"], seconds)["MSFT"]
    reordered = run(SyntheticMarket(5), ["TSLA", "MSFT", "AAPL"], seconds)["MSFT"]
    assert alone == reordered
    late = SyntheticMarket(5)
    run(late, ["AAPL"], range(START, START + 60))
    assert run(late, ["MSFT", "AAPL"], seconds)["MSFT"] == alone


def test_asking_twice_for_a_second_returns_the_same_frame() -> None:
    market = SyntheticMarket(2)
    first = market.frame("AAPL", START)
    first["c"] = -1.0  # the caller's copy, not the market's state
    again = market.frame("AAPL", START)
    assert again["c"] > 0
    assert market.frame("AAPL", START) == again
    assert market.frame("AAPL", START + 1) != again


def test_joining_mid_minute_sees_the_bar_so_far() -> None:
    frame = SyntheticMarket(4).frame("AAPL", START)
    assert frame["t"] == START - 30
    assert frame["v"] > 10 * 100  # 31 seconds of trading at no less than ~100 shares a second
    assert frame["h"] > frame["l"]


def test_generated_recording_is_a_valid_session(tmp_path: Path) -> None:
    path = generate_recording(tmp_path / "gen.jsonl", TICKERS, minutes=2, seed=1, start_s=START)
    header = read_header(path)
    assert header.tickers == tuple(TICKERS)
    assert header.url == "wss://ws.finazon.io/v1"
    entries = list(iter_entries(path))
    assert not [entry for entry in entries if isinstance(entry, Corrupt)]
    connected, subscribe, ack, *frames, disconnected = entries
    assert isinstance(connected, Lifecycle)
    assert connected.event == "connected"
    assert isinstance(subscribe, Sent)
    assert orjson.loads(subscribe.text) == {
        "event": "subscribe",
        "dataset": "us_stocks_essential",
        "tickers": TICKERS,
        "channel": "bars",
        "frequency": "1s",
        "aggregation": "1m",
    }
    assert isinstance(ack, Received)
    acknowledgement = orjson.loads(ack.text)
    assert acknowledgement["status"] == "success"
    assert acknowledgement["code"] == "SUCCESS_SUBSCRIPTION"
    assert acknowledgement["data"]["tickers"] == TICKERS
    assert isinstance(disconnected, Lifecycle)
    assert disconnected.event == "disconnected"
    assert len(frames) == len(TICKERS) * 120
    times = [entry.t_ns for entry in entries if not isinstance(entry, Corrupt)]
    assert times == sorted(times)
    assert len(set(times)) == len(times)
    seconds = range(START, START + 120)
    by_ticker: dict[str, list[Any]] = defaultdict(list)
    for index, entry in enumerate(frames):
        assert isinstance(entry, Received)
        assert entry.conn == 1
        second = seconds[index // len(TICKERS)]
        assert 0 < entry.t_ns - second * 1_000_000_000 < 1_000_000_000  # just after its second
        bar = orjson.loads(entry.text)
        assert bar["s"] == TICKERS[index % len(TICKERS)]
        by_ticker[bar["s"]].append(bar)
    for bars in by_ticker.values():
        check_bars(bars, seconds, decimals=2)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    args: dict[str, Any] = {"minutes": 1, "seed": 9, "start_s": START}
    one = generate_recording(tmp_path / "one.jsonl", TICKERS, **args).read_bytes()
    two = generate_recording(tmp_path / "two.jsonl", TICKERS, **args).read_bytes()
    assert one == two
    args["seed"] = 10
    assert generate_recording(tmp_path / "three.jsonl", TICKERS, **args).read_bytes() != one


def test_generation_wants_tickers_and_minutes(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="at least one ticker"):
        generate_recording(tmp_path / "x.jsonl", [])
    with pytest.raises(ConfigurationError, match="at least 1"):
        generate_recording(tmp_path / "x.jsonl", ["AAPL"], minutes=0)


def test_the_shipped_sample_is_what_its_readme_command_generates(tmp_path: Path) -> None:
    # recordings/README.md: finazon-trio generate recordings/sample.jsonl
    #   --tickers AAPL,MSFT,GOOGL,AMZN,TSLA --minutes 4 --seed 7 --start 2024-11-08T15:30:30Z
    start = int(dt.datetime.fromisoformat("2024-11-08T15:30:30+00:00").timestamp())
    assert start == START
    fresh = generate_recording(tmp_path / "sample.jsonl", TICKERS, minutes=4, seed=7, start_s=START)
    assert SAMPLE.read_bytes() == fresh.read_bytes()
    assert SAMPLE.stat().st_size < 2_000_000
