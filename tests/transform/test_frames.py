"""Parsing and validating frames: bars, protocol messages and every reject reason."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from finazon_trio.transform import frames
from finazon_trio.transform.frames import Bar, Protocol, Reject, parse_bar, parse_frame

from ..helpers.frames import BAR, DROP, text


def only(items: list[Bar | Reject | Protocol]) -> Bar | Reject | Protocol:
    assert len(items) == 1
    return items[0]


def test_documented_frame_is_a_bar_with_every_field() -> None:
    frame = text()
    assert only(parse_frame(frame)) == Bar(
        "AAPL",
        1699540020,
        220.06,
        220.13,
        219.92,
        219.96,
        4572,
        frame.encode(),
        data_source="us_stocks_essential",
        provider="finazon",
        channel="bars",
        frequency="1s",
        aggregation="1m",
        frequency_ms=1000,
    )


def test_raw_is_the_frame_exactly_as_received() -> None:
    frame = ' { "s" : "AAPL", "t": 1699540020, "o": 1, "h": 2, "l": 1, "c": 2, "v": 7 } '
    bar = only(parse_frame(frame))
    assert isinstance(bar, Bar)
    assert bar.raw == frame.encode()


def test_older_api_shape_without_d_and_with_a_stray_space_in_aggr() -> None:
    bar = only(parse_frame(text(d=DROP, aggr=" 1m", f=" 10s ")))
    assert isinstance(bar, Bar)
    assert (bar.data_source, bar.aggregation, bar.frequency) == (None, "1m", "10s")
    assert bar.frequency_ms == 10_000


def test_optional_fields_absent_or_null_are_none() -> None:
    absent = only(parse_frame(text(d=DROP, p=DROP, ch=DROP, f=DROP, aggr=DROP)))
    null = only(parse_frame(text(d=None, p=None, ch=None, f=None, aggr=None)))
    for bar in (absent, null):
        assert isinstance(bar, Bar)
        assert (bar.data_source, bar.provider, bar.channel) == (None, None, None)
        assert (bar.frequency, bar.aggregation, bar.frequency_ms) == (None, None, None)


def test_numbers_convert_prices_to_float_and_keep_volume_as_given() -> None:
    bar = only(parse_frame(text(t=1699540020.0, o=1, h=3, l=1, c=2, v=12.5)))
    assert isinstance(bar, Bar)
    assert bar.bar_time == 1699540020
    assert type(bar.bar_time) is int
    assert all(type(x) is float for x in (bar.open, bar.high, bar.low, bar.close))
    assert bar.volume == 12.5
    integral = only(parse_frame(text(v=12)))
    assert isinstance(integral, Bar)
    assert type(integral.volume) is int


@pytest.mark.parametrize(
    "message",
    [
        {"event": "heartbeat", "status": "success"},
        {"event": "heartbeat"},
        {"status": "error", "message": "Ticker FOO is not supported"},
        {"status": "success", "code": "SUCCESS_SUBSCRIPTION", "data": {"tickers": ["AAPL"]}},
        {"status": "success", "data": [BAR]},
        {**BAR, "status": "success"},
    ],
)
def test_objects_with_event_or_status_are_protocol_messages(message: dict[str, Any]) -> None:
    assert parse_frame(orjson.dumps(message).decode()) == [Protocol(message)]


def test_data_frames_are_unpacked_and_a_bad_element_spoils_only_itself() -> None:
    good = {**BAR, "s": "MSFT"}
    bad = {**BAR, "h": 1.0}
    frame = orjson.dumps({"ch": "bars", "data": [BAR, bad, 7, good]}).decode()
    first, second, third, fourth = parse_frame(frame)
    assert isinstance(first, Bar)
    assert first.symbol == "AAPL"
    assert first.raw == orjson.dumps(BAR)
    assert second == Reject(
        frames.HIGH_BELOW_LOW, "high 1.0 is below low 219.92", orjson.dumps(bad).decode(), "AAPL"
    )
    assert isinstance(third, Reject)
    assert third.reason == frames.NOT_OBJECT
    assert (third.text, third.symbol) == ("7", None)
    assert isinstance(fourth, Bar)
    assert fourth.symbol == "MSFT"
    assert fourth.raw == orjson.dumps(good)


def test_an_empty_data_list_holds_nothing() -> None:
    assert parse_frame('{"ch": "bars", "data": []}') == []


REJECTS = [
    # (frame, reason, detail)
    ("not json", frames.NOT_JSON, "not JSON: "),
    ("", frames.NOT_JSON, "not JSON: "),
    ('{"s": "AAPL", "t": ', frames.NOT_JSON, "not JSON: "),
    ("[1, 2]", frames.NOT_OBJECT, "a JSON array, not an object"),
    ('"AAPL"', frames.NOT_OBJECT, "a JSON string, not an object"),
    ("null", frames.NOT_OBJECT, "a JSON null, not an object"),
    (text(c=DROP), frames.MISSING_FIELD, "missing field 'c'"),
    (text(s=DROP), frames.MISSING_FIELD, "missing field 's'"),
    (text(t=DROP, v=DROP), frames.MISSING_FIELD, "missing field 't'"),
    (text(s=42), frames.WRONG_TYPE, "field 's' must be a non-empty string, not number"),
    (text(s=""), frames.WRONG_TYPE, "field 's' must be a non-empty string, not an empty one"),
    (text(o="220.06"), frames.WRONG_TYPE, "field 'o' must be a number, not string"),
    (text(v=True), frames.WRONG_TYPE, "field 'v' must be a number, not boolean"),
    (text(c=None), frames.WRONG_TYPE, "field 'c' must be a number, not null"),
    (text(t=1699540020.5), frames.WRONG_TYPE, "field 't' must be whole seconds, not 1699540020.5"),
    (text(t=2**63), frames.WRONG_TYPE, f"field 't' ({2**63}) does not fit in 64 bits"),
    (text(aggr=1), frames.WRONG_TYPE, "field 'aggr' must be a string, not number"),
    (text(d=["x"]), frames.WRONG_TYPE, "field 'd' must be a string, not array"),
    (text(ch={}), frames.WRONG_TYPE, "field 'ch' must be a string, not object"),
    (text(v=-1), frames.NEGATIVE, "field 'v' is negative (-1)"),
    (text(l=-1.5), frames.NEGATIVE, "field 'l' is negative (-1.5)"),
    (text(t=-60), frames.NEGATIVE, "field 't' is negative (-60)"),
    (text(h=219.0), frames.HIGH_BELOW_LOW, "high 219.0 is below low 219.92"),
    (text(o=221), frames.OPEN_OUTSIDE_RANGE, "open 221.0 is outside [low 219.92, high 220.13]"),
    (text(o=219.9), frames.OPEN_OUTSIDE_RANGE, "open 219.9 is outside [low 219.92, high 220.13]"),
    (text(c=0), frames.CLOSE_OUTSIDE_RANGE, "close 0.0 is outside [low 219.92, high 220.13]"),
    (text(c=221), frames.CLOSE_OUTSIDE_RANGE, "close 221.0 is outside [low 219.92, high 220.13]"),
    (text(f="fast"), frames.BAD_FREQUENCY, "frequency 'fast' is not an interval like 1s or 1m"),
    (text(f="0s"), frames.BAD_FREQUENCY, "frequency '0s' is not an interval like 1s or 1m"),
    (text(f=""), frames.BAD_FREQUENCY, "frequency '' is not an interval like 1s or 1m"),
]


@pytest.mark.parametrize(("frame", "reason", "detail"), REJECTS)
def test_reject_reasons(frame: str, reason: str, detail: str) -> None:
    reject = only(parse_frame(frame))
    assert isinstance(reject, Reject)
    assert reject.reason == reason
    assert reject.detail.startswith(detail)
    assert reject.text == frame


@pytest.mark.parametrize("key", ["o", "h", "l", "c", "v", "t"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers(key: str, value: float) -> None:
    # orjson refuses NaN and numbers beyond a double (a not_json reject), so only a bar object
    # built in Python can hold one.
    reject = parse_bar({**BAR, key: value}, b"{}")
    assert reject == Reject(frames.NON_FINITE, f"field {key!r} is {value}", "{}", "AAPL")


def test_a_number_too_large_for_a_double_is_not_json() -> None:
    reject = only(parse_frame('{"s": "AAPL", "t": 1, "o": 1e400, "h": 1, "l": 1, "c": 1, "v": 1}'))
    assert isinstance(reject, Reject)
    assert reject.reason == frames.NOT_JSON


def test_rejects_name_the_symbol_when_there_is_one() -> None:
    named = only(parse_frame(text(h=1)))
    unnamed = only(parse_frame(text(s=5)))
    assert isinstance(named, Reject)
    assert named.symbol == "AAPL"
    assert isinstance(unnamed, Reject)
    assert unnamed.symbol is None


def test_reasons_are_distinct_snake_case_constants() -> None:
    assert len(set(frames.REASONS)) == len(frames.REASONS) == 11
    assert all(reason.isidentifier() and reason.islower() for reason in frames.REASONS)
    assert {reason for _frame, reason, _detail in REJECTS} | {frames.NON_FINITE, frames.STALE} == (
        set(frames.REASONS)
    )


@pytest.mark.parametrize(
    "frame",
    ["[" * 5000, "\ud800", '{"s": "\\ud800"}', "\x00", '{"data": "x"}', '{"data": [[]]}', "1e999"],
)
def test_strange_input_never_raises(frame: str) -> None:
    assert all(isinstance(item, Reject) for item in parse_frame(frame))
