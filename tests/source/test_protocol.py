"""Pure protocol helpers: classifying server messages, building and splitting client events."""

from __future__ import annotations

import json

import pytest

from finazon_trio.errors import ConfigurationError
from finazon_trio.redaction import redact
from finazon_trio.settings import Subscription
from finazon_trio.source.protocol import (
    MAX_EVENT_BYTES,
    Ack,
    AuthFailure,
    HeartbeatReply,
    Notice,
    ServerError,
    TickerError,
    classify,
    error_message,
    event_messages,
    heartbeat_reply,
    requested_tickers,
    split_tickers,
    success_message,
    url_with_key,
)

BAR = (
    '{"d":"us_stocks_essential","p":"finazon","ch":"bars","f":"1s","aggr":"1m","s":"AAPL",'
    '"t":1699540020,"o":220.06,"h":220.13,"l":219.92,"c":219.96,"v":4572}'
)


@pytest.mark.parametrize(
    "text",
    [BAR, '{"ch":"bars","data":[' + BAR + "]}", "not json", '{"status"', "[1]", '"status"', ""],
)
def test_bars_and_garbage_are_not_protocol_messages(text: str) -> None:
    assert classify(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"status":"success","code":"SUCCESS_SUBSCRIPTION","data":{"dataset":"x",'
            '"tickers":["AAPL","MSFT"],"channel":"bars"}}',
            Ack("subscribe", ("AAPL", "MSFT")),
        ),
        ('{"status":"success","code":"SUCCESS_SUBSCRIPTION"}', Ack("subscribe", ())),
        (
            '{"event":"subscribe","status":"success","tickers":"AAPL, MSFT"}',
            Ack("subscribe", ("AAPL", "MSFT")),
        ),
        (
            '{"status":"success","code":"SUCCESS_UNSUBSCRIPTION","data":{"tickers":["A"]}}',
            Ack("unsubscribe", ("A",)),
        ),
        ('{"event":"unsubscribe","status":"success"}', Ack("unsubscribe", ())),
        ('{"event":"heartbeat","status":"success"}', HeartbeatReply()),
        ('{"event":"heartbeat"}', HeartbeatReply()),
        ('{"status":"success","message":"hello"}', Notice("hello")),
    ],
)
def test_acknowledgements_and_replies(text: str, expected: object) -> None:
    assert classify(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"status":"error","message":"Ticker XYZ is not supported"}',
            TickerError("XYZ", "Ticker XYZ is not supported"),
        ),
        (
            '{"status":"error","message":"Unrecognized ticker: BTC/USDX"}',
            TickerError("BTC/USDX", "Unrecognized ticker: BTC/USDX"),
        ),
        (
            '{"status":"error","message":"not supported","ticker":"ABC"}',
            TickerError("ABC", "not supported"),
        ),
        (
            '{"status":"error","message":"unknown symbol","data":{"s":"QQQ"}}',
            TickerError("QQQ", "unknown symbol"),
        ),
        (
            '{"status":"failed","error":"Symbol NOPE.X not found"}',
            TickerError("NOPE.X", "Symbol NOPE.X not found"),
        ),
        (
            '{"status":"error","message":"Ticker AAPL is already subscribed"}',
            Notice("Ticker AAPL is already subscribed"),
        ),
        ('{"status":"error","message":"Internal error"}', ServerError("Internal error")),
        ('{"status":"error"}', ServerError("(no message)")),
    ],
)
def test_errors(text: str, expected: object) -> None:
    assert classify(text, {"AAPL", "NOPE.X", "bad one"}) == expected


def test_error_about_an_odd_ticker_of_ours() -> None:
    message = '{"status":"error","message":"Ticker bad one is not supported"}'
    assert classify(message, {"AAPL", "bad one"}) == TickerError(
        "bad one", "Ticker bad one is not supported"
    )


@pytest.mark.parametrize(
    "message",
    [
        "Invalid API key",
        "invalid apikey",
        "api_key is missing",
        "Unauthorized",
        "Not authorised",
        "Authorization failed",
        "Authentication required",
        "Forbidden",
        "403 Forbidden",
        "Access denied",
        "HTTP 401",
    ],
)
def test_authentication_failures(message: str) -> None:
    assert classify(json.dumps({"status": "error", "message": message})) == AuthFailure(message)


def test_auth_failure_in_the_code() -> None:
    text = '{"status":"error","code":"UNAUTHORIZED","message":"go away"}'
    assert classify(text) == AuthFailure("go away")


def test_a_forbidden_ticker_is_that_tickers_problem() -> None:
    text = '{"status":"error","message":"Ticker TSLA is forbidden on your plan"}'
    assert classify(text, {"TSLA"}) == TickerError("TSLA", "Ticker TSLA is forbidden on your plan")


SUB = Subscription(dataset="sip_non_pro", frequency="10s", aggregation="1m")


def test_event_message_shape() -> None:
    (message,) = event_messages("subscribe", SUB, ["AAPL", "MSFT", "AAPL"])
    assert json.loads(message) == {
        "event": "subscribe",
        "dataset": "sip_non_pro",
        "channel": "bars",
        "frequency": "10s",
        "aggregation": "1m",
        "tickers": ["AAPL", "MSFT"],
    }


@pytest.mark.parametrize("limit", [MAX_EVENT_BYTES, 200, 137])
def test_huge_ticker_lists_are_split_under_the_limit(limit: int) -> None:
    tickers = [f"T{i}" + "é" * (i % 3) for i in range(30_000 if limit == MAX_EVENT_BYTES else 300)]
    messages = event_messages("subscribe", SUB, tickers, max_bytes=limit)
    sizes = [len(m.encode()) for m in messages]
    assert max(sizes) <= limit
    assert min(sizes[:-1]) > limit - 20  # packed tight: nothing wasted
    assert [t for m in messages for t in json.loads(m)["tickers"]] == tickers


def test_a_ticker_too_long_for_any_message() -> None:
    with pytest.raises(ConfigurationError, match="does not fit"):
        event_messages("subscribe", SUB, ["A" * 200], max_bytes=150)


def test_no_tickers_no_message() -> None:
    assert event_messages("subscribe", SUB, []) == []


@pytest.mark.parametrize(
    ("count", "parts", "sizes"),
    [(7, 3, [3, 2, 2]), (2, 5, [1, 1]), (6, 1, [6]), (0, 3, [0]), (9, 3, [3, 3, 3])],
)
def test_split_tickers(count: int, parts: int, sizes: list[int]) -> None:
    tickers = [f"T{i}" for i in range(count)]
    groups = split_tickers(tickers + tickers[:2], parts)  # duplicates dropped
    assert [len(g) for g in groups] == sizes
    assert [t for g in groups for t in g] == tickers


def test_url_with_key_and_its_redaction() -> None:
    url = url_with_key("wss://ws.finazon.io/v1?apikey=old&x=1", "k&y=z")
    assert url == "wss://ws.finazon.io/v1?x=1&apikey=k%26y%3Dz"
    assert redact(url, ("k&y=z",)) == "wss://ws.finazon.io/v1?x=1&apikey=***"
    assert url_with_key("ws://127.0.0.1:8765/v1", "abc") == "ws://127.0.0.1:8765/v1?apikey=abc"


def test_server_messages_round_trip_through_classify() -> None:
    ack = success_message("SUCCESS_SUBSCRIPTION", {"tickers": ["AAPL"]}, request_id=3)
    assert json.loads(ack)["request_id"] == 3
    assert classify(ack) == Ack("subscribe", ("AAPL",))
    assert classify(error_message("Ticker ZZZ is not supported")) == TickerError(
        "ZZZ", "Ticker ZZZ is not supported"
    )
    assert classify(heartbeat_reply()) == HeartbeatReply()
    assert json.loads(heartbeat_reply("r1")) == {
        "event": "heartbeat",
        "status": "success",
        "request_id": "r1",
    }


def test_requested_tickers() -> None:
    assert requested_tickers(["A", "B"]) == ["A", "B"]
    assert requested_tickers("A, B,") == ["A", "B"]
    assert requested_tickers([1]) is None
    assert requested_tickers(None) is None
