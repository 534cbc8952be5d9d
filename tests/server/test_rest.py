"""``serve --rest-port``: the time-series endpoint over the market the WebSocket streams, its
parameters, paging, auth, error codes and faults; and ``drop_for``, which keeps a dropped
client away while the market runs on. Real sockets, real clock (httpx resolves in a thread)."""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from finazon_trio.server.rest import garbage_body, time_series
from finazon_trio.server.synthetic import SyntheticMarket

from ..helpers.server import T0, server

KEY = "rest-key-42"
PATH = "/latest/finazon/us_stocks_essential/time_series"
SPEED = 120.0


def bars_of(ticker: str, dataset: str) -> list[dict[str, Any]] | None:
    if ticker != "AAPL":
        return None
    return [{"t": T0 + 60 * i, "o": 1, "h": 2, "l": 1, "c": 2, "v": i, "x": 0} for i in range(5)]


def answer(**params: str) -> tuple[int, Any]:
    got = time_series(PATH, {k: [v] for k, v in params.items()}, bars_of)
    return got.status, json.loads(got.body)


def test_time_series_parameters_paging_and_errors() -> None:
    status, body = answer(ticker="AAPL", order="asc", page_size="2", page="1")
    assert status == 200
    assert [bar["v"] for bar in body["data"]] == [2, 3]
    assert set(body["data"][0]) == {"t", "o", "h", "l", "c", "v"}
    _, desc = answer(ticker="AAPL", start_at=str(T0 + 60), end_at=str(T0 + 180))
    assert [bar["v"] for bar in desc["data"]] == [3, 2, 1]  # newest first by default
    assert answer(ticker="AAPL", page="9")[1] == {"data": []}
    assert answer(ticker="NOPE")[1]["error"]["code"] == "INVALID_TICKER"
    assert answer()[0] == 400
    assert answer(ticker="AAPL", interval="1h")[1]["error"]["code"] == "INVALID_PARAMETER"
    assert answer(ticker="AAPL", page_size="1001")[0] == 400
    assert answer(ticker="AAPL", start_at="soon")[0] == 400
    assert time_series("/nothing", {}, bars_of).status == 404


def test_garbage_bodies_are_200_bodies_a_client_must_reject() -> None:
    good = json.dumps({"data": bars_of("AAPL", "")}).encode()
    rng = random.Random(1)
    bodies = {garbage_body(rng, good) for _ in range(50)}
    assert len(bodies) == 7
    assert good not in bodies


def test_the_synthetic_market_runs_on_between_updates() -> None:
    """A ticker asked every second and one asked at two seconds 5 minutes apart walk through
    the same updates per second, so both close the same bars (what ``drop_for`` relies on)."""
    steady, jumpy = SyntheticMarket(3), SyntheticMarket(3)
    start = T0 - T0 % 60
    for second in range(start, start + 360):
        steady.frame("AAPL", second)
    jumpy.frame("AAPL", start)
    jumpy.frame("AAPL", start + 359)
    assert steady.closed_bars("AAPL", start + 360) == jumpy.closed_bars("AAPL", start + 360)
    closed = jumpy.closed_bars("AAPL", start + 360)
    assert [bar["t"] for bar in closed] == [start + 60 * i for i in range(6)]
    assert SyntheticMarket(3).closed_bars("AAPL", start) == []  # never asked: no history


async def get(port: int, key: str | None = KEY, **params: str) -> httpx.Response:
    headers = {"Authorization": f"apikey {key}"} if key else {}
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{port}{PATH}", params=params, headers=headers)


async def stream_minutes(port: int, minutes: int) -> list[dict[str, Any]]:
    """Subscribe to AAPL and collect its bar frames for ``minutes`` minutes of market time, or
    until the server drops the connection."""
    frames: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionClosed):
        async with open_websocket_url(f"ws://127.0.0.1:{port}/v1?apikey={KEY}") as ws:
            await ws.send_message(json.dumps({"event": "subscribe", "tickers": ["AAPL"]}))
            with trio.move_on_after(minutes * 60 / SPEED):
                while True:
                    message = json.loads(await ws.get_message())
                    if "s" in message:
                        frames.append(message)
    return frames


async def test_rest_serves_the_final_state_of_each_minute_the_websocket_streamed() -> None:
    async with server(rest_port=0, speed=SPEED) as (port, log):
        frames = await stream_minutes(port, 3)
        assert log.rest_port is not None
        response = await get(log.rest_port, ticker="AAPL", order="asc", page_size="1000")
        by_query = await get(
            log.rest_port, None, ticker="AAPL", order="asc", page_size="1000", apikey=KEY
        )
    assert response.status_code == 200
    served = {bar["t"]: bar for bar in response.json()["data"]}
    assert by_query.json() == response.json()
    finals: dict[int, dict[str, Any]] = {}
    for frame in frames:
        finals[frame["t"]] = {key: frame[key] for key in ("t", "o", "h", "l", "c", "v")}
    closed = sorted(finals)[1:-1]  # the first may have started before, the last is open
    assert len(closed) >= 1
    for t in closed:
        assert served[t] == finals[t]
    assert max(served) < max(finals)  # the open minute is not served


@pytest.mark.parametrize(
    ("options", "key", "status", "code"),
    [
        ({"rest_reject_auth": True}, KEY, 401, "INVALID_API_KEY"),
        ({"api_keys": ("other",)}, KEY, 401, "INVALID_API_KEY"),
        ({}, None, 401, "INVALID_API_KEY"),
        ({"rest_failure_rate": 1.0}, KEY, 503, "DATA_UNAVAILABLE"),
    ],
)
async def test_rest_errors(
    options: dict[str, Any], key: str | None, status: int, code: str
) -> None:
    async with server(rest_port=0, **options) as (_, log):
        assert log.rest_port is not None
        response = await get(log.rest_port, key, ticker="AAPL")
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


async def test_rest_rate_limit_and_unknown_ticker() -> None:
    async with server(rest_port=0, rest_rate_limit=2, unknown_tickers=("NOPE",)) as (_, log):
        assert log.rest_port is not None
        first = await get(log.rest_port, ticker="NOPE")
        second = await get(log.rest_port, ticker="AAPL")
        third = await get(log.rest_port, ticker="AAPL")
    assert (first.status_code, first.json()["error"]["code"]) == (400, "INVALID_TICKER")
    assert second.status_code == 200
    assert (third.status_code, third.json()["error"]["code"]) == (429, "API_RATE_LIMIT_EXCEEDED")
    assert log.rest == {400: 1, 200: 1, 429: 1}


async def test_drop_for_refuses_the_dropped_key_while_the_market_runs_on() -> None:
    """After a drop the key's handshakes get HTTP 503 for ``drop_for`` seconds of market time;
    then the client comes back to a market that ran on (no bar time repeats)."""
    async with server(rest_port=0, speed=SPEED, drop_every=0.5, drop_for=120) as (port, log):
        first = await stream_minutes(port, 2)
        with pytest.raises(Exception, match="503"):
            async with open_websocket_url(f"ws://127.0.0.1:{port}/v1?apikey={KEY}"):
                pass
        async with open_websocket_url(f"ws://127.0.0.1:{port}/v1?apikey=another"):
            pass  # another key is not refused
        await trio.sleep(120 / SPEED)
        again = await stream_minutes(port, 0.25)
    assert [client.ended for client in log.clients[:2]] == ["drop", "rejected"]
    assert again
    assert again[0]["t"] - first[-1]["t"] >= 120
