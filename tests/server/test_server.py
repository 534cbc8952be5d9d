"""The Finazon-compatible server, driven by a plain trio-websocket client over real sockets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    DisconnectionTimeout,
    WebSocketConnection,
    open_websocket_url,
)

from finazon_trio.server.synthetic import generate_recording
from finazon_trio.source.protocol import MAX_EVENT_BYTES
from finazon_trio.transform.frames import Bar, Reject, parse_frame

from ..helpers.server import T0, server

KEY = "test-key-0123456789"


def url(port: int, key: str | None = KEY) -> str:
    return f"ws://127.0.0.1:{port}/v1" + ("" if key is None else f"?apikey={key}")


def subscribe(*tickers: str, **extra: Any) -> str:
    return json.dumps(
        {
            "event": "subscribe",
            "dataset": "us_stocks_essential",
            "tickers": list(tickers),
            "channel": "bars",
            "frequency": "1s",
            "aggregation": "1m",
            **extra,
        }
    )


async def messages(ws: WebSocketConnection, count: int) -> list[Any]:
    return [json.loads(await ws.get_message()) for _ in range(count)]


async def test_subscription_is_acknowledged_then_bars_stream(autojump_clock: object) -> None:
    async with server() as (port, log), open_websocket_url(url(port)) as ws:
        await ws.send_message(subscribe("AAPL", "MSFT"))
        ack, *bars = await messages(ws, 5)
        assert ack == {
            "status": "success",
            "code": "SUCCESS_SUBSCRIPTION",
            "data": {
                "dataset": "us_stocks_essential",
                "frequency": "1s",
                "aggregation": "1m",
                "tickers": ["AAPL", "MSFT"],
                "channel": "bars",
            },
        }
        assert [bar["s"] for bar in bars] == ["AAPL", "MSFT", "AAPL", "MSFT"]
        assert bars[0]["t"] == bars[2]["t"] == T0 - T0 % 60  # 1 s updates of the same 1 m bar
        for bar in bars:
            (parsed,) = parse_frame(json.dumps(bar))
            assert isinstance(parsed, Bar)
        assert log.clients[0].received == [subscribe("AAPL", "MSFT")]


async def test_unknown_tickers_get_one_error_each_and_the_rest_stream(
    autojump_clock: object,
) -> None:
    async with server(unknown_tickers=("NOPE",)) as (port, _), open_websocket_url(url(port)) as ws:
        await ws.send_message(subscribe("AAPL", "bad ticker", "NOPE", "lower"))
        replies = await messages(ws, 4)
        assert replies[:3] == [
            {"status": "error", "message": "Ticker bad ticker is not supported"},
            {"status": "error", "message": "Ticker NOPE is not supported"},
            {"status": "error", "message": "Ticker lower is not supported"},
        ]
        assert replies[3]["data"]["tickers"] == ["AAPL"]
        assert {bar["s"] for bar in await messages(ws, 5)} == {"AAPL"}


async def test_heartbeat_reply_echoes_request_id(autojump_clock: object) -> None:
    async with server() as (port, _), open_websocket_url(url(port)) as ws:
        await ws.send_message('{"event":"heartbeat"}')
        await ws.send_message('{"event":"heartbeat","request_id":7}')
        assert await messages(ws, 2) == [
            {"event": "heartbeat", "status": "success"},
            {"event": "heartbeat", "status": "success", "request_id": 7},
        ]


async def test_unsubscribe_stops_that_ticker(autojump_clock: object) -> None:
    async with server() as (port, _), open_websocket_url(url(port)) as ws:
        await ws.send_message(subscribe("AAPL", "MSFT"))
        await messages(ws, 3)
        await ws.send_message(subscribe("MSFT").replace('"subscribe"', '"unsubscribe"'))
        reply = None
        while reply is None or "s" in reply:  # bars in flight may come first
            reply = json.loads(await ws.get_message())
        assert reply["code"] == "SUCCESS_UNSUBSCRIPTION"
        assert reply["data"]["tickers"] == ["MSFT"]
        assert {bar["s"] for bar in await messages(ws, 4)} == {"AAPL"}


async def test_bad_events_get_errors(autojump_clock: object) -> None:
    async with server() as (port, _), open_websocket_url(url(port)) as ws:
        for text in ("not json", "[1]", '{"event":"dance"}', subscribe("AAPL", channel="quotes")):
            await ws.send_message(text)
        replies = await messages(ws, 4)
        assert [r["status"] for r in replies] == ["error"] * 4
        assert replies[2]["message"] == "Unknown event: dance"
        assert replies[3]["message"] == "Channel quotes is not supported"


async def test_finazon_limits_are_enforced(autojump_clock: object) -> None:
    async with server() as (port, _), open_websocket_url(url(port)) as ws:
        await ws.send_message(subscribe(*(f"T{i:06d}" for i in range(MAX_EVENT_BYTES // 10))))
        (too_big,) = await messages(ws, 1)
        assert too_big["message"].startswith("Message too large")
        for _ in range(99):  # 100 events in all within the minute: still fine
            await ws.send_message('{"event":"heartbeat"}')
        await messages(ws, 99)
        await ws.send_message('{"event":"heartbeat"}')
        (limited,) = await messages(ws, 1)
        assert limited["message"].startswith("Too many requests")
        await trio.sleep(60)
        await ws.send_message('{"event":"heartbeat"}')
        assert await messages(ws, 1) == [{"event": "heartbeat", "status": "success"}]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"api_keys": ("good",)}, "bad"),
        ({}, None),
        ({}, ""),
        ({"reject_auth": True}, KEY),
    ],
)
async def test_refused_keys_get_http_401(options: dict[str, Any], key: str | None) -> None:
    async with server(**options) as (port, log):
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(url(port, key)):
                pass
        assert refused.value.status_code == 401
        assert b"API key" in (refused.value.body or b"")
        assert [client.ended for client in log.clients] == ["rejected"]


async def test_accepted_key(autojump_clock: object) -> None:
    async with (
        server(api_keys=("one", "two")) as (port, _),
        open_websocket_url(url(port, "two")) as ws,
    ):
        await ws.send_message('{"event":"heartbeat"}')
        assert await messages(ws, 1) == [{"event": "heartbeat", "status": "success"}]


async def test_refused_key_as_a_message(autojump_clock: object) -> None:
    async with (
        server(reject_auth=True, auth_failure="message") as (port, _),
        open_websocket_url(url(port)) as ws,
    ):
        (refusal,) = await messages(ws, 1)
        assert refusal["status"] == "error"
        assert "API key" in refusal["message"]
        with pytest.raises(ConnectionClosed):
            await ws.get_message()


async def test_refused_key_as_a_close_reason(autojump_clock: object) -> None:
    async with (
        server(reject_auth=True, auth_failure="close") as (port, _),
        open_websocket_url(url(port)) as ws,
    ):
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason is not None
        assert closed.value.reason.code == 1008
        assert "API key" in (closed.value.reason.reason or "")


async def test_clients_have_their_own_subscriptions(autojump_clock: object) -> None:
    async with (
        server() as (port, log),
        open_websocket_url(url(port)) as one,
        open_websocket_url(url(port)) as two,
    ):
        await one.send_message(subscribe("AAPL"))
        await two.send_message(subscribe("BTC/USDT", "MSFT"))
        one_bars = (await messages(one, 4))[1:]
        two_bars = (await messages(two, 5))[1:]
        assert {bar["s"] for bar in one_bars} == {"AAPL"}
        assert {bar["s"] for bar in two_bars} == {"BTC/USDT", "MSFT"}
        assert len(log.clients) == 2


async def test_speed_sets_the_update_rate(autojump_clock: object) -> None:
    async with server(speed=100.0) as (port, _), open_websocket_url(url(port)) as ws:
        await ws.send_message(subscribe("AAPL"))
        await messages(ws, 1)
        start = trio.current_time()
        bars = await messages(ws, 200)
        assert trio.current_time() - start == pytest.approx(2.0, abs=0.011)
        times = [bar["t"] for bar in bars]
        assert times == sorted(times)
        assert len(set(times)) >= 3  # 200 simulated seconds: the bar rolled over


@pytest.mark.parametrize("style", ["wrapped", "legacy"])
async def test_frame_styles(autojump_clock: object, style: str) -> None:
    async with (
        server(frame_style=style) as (port, _),
        open_websocket_url(url(port)) as ws,
    ):
        await ws.send_message(subscribe("AAPL", "MSFT"))
        await messages(ws, 1)
        frame = await ws.get_message()
        assert isinstance(frame, str)
        if style == "wrapped":
            obj = json.loads(frame)
            assert obj["ch"] == "bars"
            assert [bar["s"] for bar in obj["data"]] == ["AAPL", "MSFT"]
        else:
            obj = json.loads(frame)
            assert "d" not in obj
            assert obj["aggr"] == " 1m"
        assert all(isinstance(item, Bar) for item in parse_frame(frame))


async def read_until_closed(ws: WebSocketConnection, into: list[str]) -> ConnectionClosed:
    while True:
        try:
            message = await ws.get_message()
        except ConnectionClosed as closed:
            return closed
        assert isinstance(message, str)
        into.append(message)


async def test_drop_every_closes_between_frames(autojump_clock: object) -> None:
    async with server(drop_every=5.0, speed=10.0) as (port, log):
        received: list[str] = []
        async with open_websocket_url(url(port)) as ws:
            await ws.send_message(subscribe("AAPL", "MSFT"))
            start = trio.current_time()
            closed = await read_until_closed(ws, received)
            assert trio.current_time() - start == pytest.approx(5.0, abs=0.001)
        assert closed.reason is not None
        assert closed.reason.code == 1006  # no closing handshake
        assert received == log.clients[0].sent
        assert len(received) > 90
        assert log.clients[0].ended == "drop"


async def stalled_client(port: int, received: list[str]) -> None:
    async with open_websocket_url(url(port), disconnect_timeout=5) as ws:
        await ws.send_message(subscribe("AAPL"))
        with trio.move_on_after(10):
            await read_until_closed(ws, received)
        await ws.send_message('{"event":"heartbeat"}')  # the socket is still open...
        with trio.move_on_after(30) as no_pong:
            await ws.ping()
        assert no_pong.cancelled_caught  # ...but nothing answers, not even pings
        assert ws.closed is None


async def test_stall_goes_silent_without_closing(autojump_clock: object) -> None:
    async with server(stall_after=3.0) as (port, log):
        received: list[str] = []
        with pytest.raises(DisconnectionTimeout):  # not even the closing handshake is answered
            await stalled_client(port, received)
        assert received == log.clients[0].sent
        assert 3 <= len(received) <= 5  # the ack, then one frame a second until the stall
        assert log.clients[0].ended == "stall"


async def test_garbage_is_interleaved_with_valid_bars(autojump_clock: object) -> None:
    async with server(garbage_rate=0.5, seed=3) as (port, log), open_websocket_url(url(port)) as ws:
        await ws.send_message(subscribe("AAPL", "MSFT"))
        texts = [str(await ws.get_message()) for _ in range(200)]
    assert texts == log.clients[0].sent[:200]
    parsed = [item for text in texts[1:] for item in parse_frame(text)]
    bars = [p for p in parsed if isinstance(p, Bar)]
    rejects = [p for p in parsed if isinstance(p, Reject)]
    assert len(bars) + len(rejects) == 199
    assert 40 <= len(rejects) <= 90
    assert len({r.reason for r in rejects}) >= 4


async def test_recording_mode_streams_the_recorded_frames(
    autojump_clock: object, tmp_path: Path
) -> None:
    path = generate_recording(tmp_path / "r.jsonl", ["AAPL", "MSFT"], minutes=1, start_s=T0)
    recorded = [
        json.loads(line)["text"]
        for line in path.read_text().splitlines()[1:]
        if '"dir":"in"' in line and '"s\\":\\"AAPL' in line
    ]
    async with (
        server(recording=path, loop=True, speed=2.0) as (port, _),
        open_websocket_url(url(port)) as ws,
    ):
        await ws.send_message(subscribe("AAPL", "GOOGL"))
        error, ack = await messages(ws, 2)
        assert error == {"status": "error", "message": "Ticker GOOGL is not supported"}
        assert ack["data"]["tickers"] == ["AAPL"]
        first_lap = [await ws.get_message() for _ in range(60)]
        assert first_lap == recorded  # the recorded texts, unchanged
        second_lap = [json.loads(await ws.get_message()) for _ in range(60)]
        for before, after in zip(first_lap, second_lap, strict=True):
            shifted = {**json.loads(before)}
            shifted["t"] += 120  # the lap's bars move past the recording's span
            assert after == shifted


async def test_stall_then_drop(autojump_clock: object) -> None:
    async with server(stall_after=2.0, drop_every=6.0) as (port, log):
        received: list[str] = []
        async with open_websocket_url(url(port)) as ws:
            await ws.send_message(subscribe("AAPL"))
            start = trio.current_time()
            closed = await read_until_closed(ws, received)
            assert trio.current_time() - start == pytest.approx(6.0, abs=0.001)
        assert closed.reason is not None
        assert closed.reason.code == 1006
        assert received == log.clients[0].sent
        assert len(received) <= 3  # the ack and the frames of the first two seconds
