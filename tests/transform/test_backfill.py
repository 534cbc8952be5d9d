"""Gaps and backfill, the pure parts and the transform's decisions, without sockets or Kafka:
detection, holding and release, REST answers judged, gap records; REST bodies fuzzed."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from finazon_trio.events import (
    BackfillRequest,
    HttpExchange,
    Lifecycle,
    Message,
    RestResult,
)
from finazon_trio.observe.metrics import TransformMetrics
from finazon_trio.settings import Output, Subscription
from finazon_trio.transform.backfill import (
    GAP_REASONS,
    MAX_HELD,
    MAX_HISTORY_BARS,
    GapRecord,
    ask_range,
    decode_gap,
    gap_ranges,
    judge,
    missing,
    rest_bars,
    status_reason,
)
from finazon_trio.transform.stage import Transformer

M = 1_731_079_980  # a minute's open (Unix seconds)
OUTPUT = Output(points=3, gaps_topic="gaps")


def frame(symbol: str, t: int, c: float, v: int) -> str:
    return json.dumps({"s": symbol, "t": t, "o": 10.0, "h": 12.0, "l": 9.0, "c": c, "v": v})


def rest_bar(t: int, c: float = 11.0, v: int = 500) -> dict[str, Any]:
    return {"t": t, "o": 10.0, "h": 12.0, "l": 9.0, "c": c, "v": v}


def answer(number: int, symbol: str, bars: list[dict[str, Any]], status: int = 200) -> RestResult:
    body = json.dumps({"data": bars}) if status == 200 else '{"error": {"code": "X"}}'
    exchange = HttpExchange(1, "/finazon/us_stocks_essential/time_series", {}, status, body)
    return RestResult(9_000_000_000_000, number, symbol, (exchange,))


class Harness:
    """A transformer with backfill on, and the requests it made."""

    def __init__(self) -> None:
        self.requests: list[BackfillRequest] = []
        self.metrics = TransformMetrics()
        self.transformer = Transformer(
            OUTPUT, Subscription(), self.metrics, backfill=self.requests.append
        )

    def frame(self, second: float, text: str, conn: int = 1) -> list[Message]:
        return self.transformer.on_frame(int(second * 1e9), text, conn)

    def event(self, event: Lifecycle | RestResult) -> list[Message]:
        return self.transformer.on_event(event)


def volumes(messages: list[Message]) -> list[dict[str, Any]]:
    return [orjson.loads(m[2]) for m in messages if m[0] == OUTPUT.volume_stream_topic]


def test_missing_is_the_bar_in_progress_and_every_minute_up_to_the_new_one() -> None:
    assert missing(M, M + 180) == (M, M + 120)
    assert missing(M, M + 60) == (M, M)
    assert missing(M, M) is None
    assert missing(M, M - 60) is None


def test_ask_range_keeps_the_history_rest_has() -> None:
    assert ask_range(M, M + 120) == (M, M + 120)
    last = M + 2000 * 60
    assert ask_range(M, last) == (last - (MAX_HISTORY_BARS - 1) * 60, last)


def test_gap_ranges_are_the_runs_of_missing_minutes() -> None:
    present = {M + 60, M + 120, M + 300}
    assert gap_ranges(M, M + 360, present) == [(M, M), (M + 180, M + 240), (M + 360, M + 360)]
    assert gap_ranges(M, M + 60, {M, M + 60}) == []


def test_status_reasons() -> None:
    assert [status_reason(s) for s in (401, 403, 429, 500, 503, 400, 404, 302)] == [
        "unauthorized",
        "unauthorized",
        "rate_limited",
        "unavailable",
        "unavailable",
        "bad_request",
        "bad_request",
        "invalid_response",
    ]
    assert status_reason(0, "timeout") == "timeout"
    assert status_reason(0, "network: ConnectError()") == "network"


def test_rest_bars_rejects_shapes_fields_range_and_duplicates() -> None:
    body = json.dumps(
        {
            "data": [
                rest_bar(M + 60),
                rest_bar(M),  # out of order: fine
                rest_bar(M, c=10.5),  # a second bar for a minute
                rest_bar(M + 600),  # outside the range
                {"t": M + 120, "o": 1.0},  # fields missing
                rest_bar(M + 30),  # not a minute
                "a string",
            ]
        }
    )
    bars, rejects = rest_bars(body, "AAPL", M, M + 120)
    assert sorted(bars) == [M, M + 60]
    assert (bars[M].close, bars[M].symbol, bars[M].frequency) == (11.0, "AAPL", "1m")
    assert rejects == 5
    assert rest_bars("<html>", "AAPL", M, M) == ({}, 1)
    assert rest_bars('{"data": {}}', "AAPL", M, M) == ({}, 1)


def test_judge_names_the_reason_for_what_is_missing() -> None:
    full = judge(answer(1, "AAPL", [rest_bar(M), rest_bar(M + 60)]), M, M + 60)
    assert (full.reason, sorted(full.bars)) == (None, [M, M + 60])
    assert judge(answer(1, "AAPL", [rest_bar(M)]), M, M + 60).reason == "not_served"
    assert judge(answer(1, "AAPL", [], status=401), M, M).reason == "unauthorized"
    garbage = judge(answer(1, "AAPL", [{"t": M}]), M, M)
    assert (garbage.reason, garbage.rejects) == ("invalid_response", 1)
    timed_out = RestResult(1, 1, "AAPL", (), "timeout")
    assert judge(timed_out, M, M).reason == "timeout"


def test_a_reconnect_backfills_the_missed_minutes_before_the_held_bars() -> None:
    """The symbol's bars wait while its backfill is in flight, the other symbol's do not; the
    answer publishes the bar in progress as its final update and the missed minute as a new
    bar, with ``origin: backfill``, then the held bars, in order."""
    h = Harness()
    h.frame(1, frame("AAPL", M, 10.5, 100))
    h.frame(1, frame("MSFT", M, 10.5, 100))
    h.event(Lifecycle(2, 1, "disconnected"))
    assert h.frame(200, frame("AAPL", M + 120, 11.5, 50), conn=2) == []  # held
    assert h.frame(200.5, frame("AAPL", M + 120, 11.6, 60), conn=2) == []  # still held
    assert h.requests == [BackfillRequest(1, "AAPL", M, M + 60)]
    assert h.metrics.backfilling == 1
    other = h.frame(201, frame("MSFT", M, 10.6, 120), conn=2)  # same minute: nothing missed
    assert [v["symbol"] for v in volumes(other)] == ["MSFT"]

    messages = h.event(answer(1, "AAPL", [rest_bar(M, c=11.0, v=400), rest_bar(M + 60)]))
    got = volumes(messages)
    assert [(v["bar_time"], v["timestamp"], v["volume_delta"]) for v in got] == [
        (M, (M + 60) * 1000, 300),  # the bar in progress: continued, delta against 100
        (M + 60, (M + 120) * 1000, 500),  # never seen: a new bar
        (M + 120, 200_000, 50),  # then the held bars
        (M + 120, 200_500, 10),
    ]
    assert [v["frequency"] for v in got] == ["1m", "1m", "1s", "1s"]
    backfilled = [m for m in messages if m[4] == [("origin", b"backfill")]]
    assert len(backfilled) == 2 * (OUTPUT.points + 1)
    assert all(m[4] is None for m in messages[len(backfilled) :])
    # The continued bar's ticks start at the last close seen (10.5), not the open.
    first_ticks = [orjson.loads(m[2])["price"] for m in messages[: OUTPUT.points]]
    assert first_ticks == [10.66666667, 10.83333333, 11.0]
    assert (h.metrics.backfilled_bars, h.metrics.gaps, h.metrics.backfilling) == (2, 0, 0)


def test_a_failed_backfill_is_a_gap_record_then_the_held_bars() -> None:
    h = Harness()
    h.frame(1, frame("AAPL", M, 10.5, 100))
    h.event(Lifecycle(2, 1, "disconnected"))
    h.frame(200, frame("AAPL", M + 180, 11.5, 50), conn=2)
    messages = h.event(answer(1, "AAPL", [], status=429))
    gap, live = messages[0], messages[1:]
    assert (gap[0], gap[1], gap[4]) == ("gaps", b"AAPL", None)
    assert orjson.loads(gap[2]) == {
        "symbol": "AAPL",
        "first_missing": M,
        "last_missing": M + 120,
        "reason": "rate_limited",
        "dataset": "us_stocks_essential",
        "detected_at": 9_000_000,
    }
    assert decode_gap(gap[2]) == GapRecord(
        "AAPL", M, M + 120, "rate_limited", "us_stocks_essential", 9_000_000
    )
    assert [v["bar_time"] for v in volumes(live)] == [M + 180]
    assert (h.metrics.gaps, h.metrics.gap_minutes) == (1, 3)


def test_a_partial_answer_fills_what_it_has_and_reports_the_rest() -> None:
    h = Harness()
    h.frame(1, frame("AAPL", M, 10.5, 100))
    h.event(Lifecycle(2, 1, "disconnected"))
    h.frame(300, frame("AAPL", M + 240, 11.5, 50), conn=2)
    messages = h.event(answer(1, "AAPL", [rest_bar(M + 60), rest_bar(M + 120)]))
    gaps = [orjson.loads(m[2]) for m in messages if m[0] == "gaps"]
    assert [(g["first_missing"], g["last_missing"], g["reason"]) for g in gaps] == [
        (M, M, "not_served"),
        (M + 180, M + 180, "not_served"),
    ]
    assert [v["bar_time"] for v in volumes(messages)] == [M + 60, M + 120, M + 240]


def test_no_disconnect_no_backfill_and_the_end_of_input_releases() -> None:
    h = Harness()
    h.frame(1, frame("AAPL", M, 10.5, 100))
    assert volumes(h.frame(200, frame("AAPL", M + 180, 11.5, 50)))  # quiet minutes: no gap
    h.event(Lifecycle(2, 1, "disconnected"))
    assert h.frame(400, frame("AAPL", M + 360, 11.5, 50), conn=2) == []
    messages = h.transformer.finish()
    assert orjson.loads(messages[0][2])["reason"] == "interrupted"
    assert [v["bar_time"] for v in volumes(messages)] == [M + 360]


def test_a_late_answer_after_a_second_disconnect_starts_the_next_backfill_in_order() -> None:
    """A drop while a backfill is in flight: the held bars after it start the next backfill
    when they are released, so each symbol's bars stay in order."""
    h = Harness()
    h.frame(1, frame("AAPL", M, 10.5, 100))
    h.event(Lifecycle(2, 1, "disconnected"))
    h.frame(200, frame("AAPL", M + 120, 11.5, 50), conn=2)
    h.event(Lifecycle(3, 2, "disconnected"))
    h.frame(400, frame("AAPL", M + 300, 11.5, 50), conn=3)
    first = h.event(answer(1, "AAPL", [rest_bar(M), rest_bar(M + 60)]))
    assert [v["bar_time"] for v in volumes(first)] == [M, M + 60, M + 120]
    assert h.requests[-1] == BackfillRequest(2, "AAPL", M + 120, M + 240)
    second = h.event(answer(2, "AAPL", [rest_bar(M + 120), rest_bar(M + 180), rest_bar(M + 240)]))
    assert [v["bar_time"] for v in volumes(second)] == [M + 120, M + 180, M + 240, M + 300]


# -- fuzzing: whatever REST sends, nothing crashes, rejects are counted, the rest is a gap --

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)
_number = st.one_of(
    st.integers(-10, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.none(),
)
_bar = st.fixed_dictionaries(
    {},
    optional={
        "t": st.sampled_from([M - 60, M, M + 60, M + 120, M + 30, -1]) | _number,
        "o": _number,
        "h": _number,
        "l": _number,
        "c": _number,
        "v": _number,
    },
)
_body = st.one_of(
    _json.map(json.dumps),
    st.lists(_bar | _json, max_size=8).map(lambda bars: json.dumps({"data": bars})),
    st.text(max_size=30),
)


@settings(max_examples=300, deadline=None)
@given(
    bodies=st.lists(_body, min_size=1, max_size=3),
    statuses=st.lists(st.sampled_from([200, 200, 429, 503, 401])),
)
def test_fuzzed_rest_answers_never_crash_and_leave_gaps(
    bodies: list[str], statuses: list[int]
) -> None:
    """Wrong shapes, missing fields, bars outside the range, duplicates, out of order, error
    statuses: never an exception; every missing minute is published or in a gap record; the
    held bar goes out after them; the symbol's bars stay in order."""
    h = Harness()
    h.frame(1, frame("AAPL", M, 10.5, 100))
    h.event(Lifecycle(2, 1, "disconnected"))
    h.frame(200, frame("AAPL", M + 120, 11.5, 150), conn=2)
    exchanges = tuple(
        HttpExchange(1, "/p/d/time_series", {}, (statuses + [200] * 3)[i], body)
        for i, body in enumerate(bodies)
    )
    messages = h.event(RestResult(5_000_000_000, 1, "AAPL", exchanges))
    published = {v["bar_time"] for v in volumes(messages)}
    gaps = [orjson.loads(m[2]) for m in messages if m[0] == "gaps"]
    covered = set(published)
    for gap in gaps:
        assert gap["reason"] in GAP_REASONS
        covered |= set(range(gap["first_missing"], gap["last_missing"] + 60, 60))
    assert covered >= {M, M + 60, M + 120}  # every minute filled or reported
    assert M + 120 in published  # the held bar went out
    bar_times = [v["bar_time"] for v in volumes(messages)]
    assert bar_times == sorted(bar_times)
    assert h.metrics.backfilling == 0


def test_too_many_held_bars_give_up_the_backfill() -> None:
    h = Harness()
    h.frame(1, frame("AAPL", M, 10.5, 100))
    h.event(Lifecycle(2, 1, "disconnected"))
    for i in range(MAX_HELD):
        assert h.frame(200 + i / 1000, frame("AAPL", M + 120, 11.5, 50 + i), conn=2) == []
    messages = h.frame(201, frame("AAPL", M + 120, 11.5, 5000), conn=2)
    assert orjson.loads(messages[0][2])["reason"] == "overflow"
    assert len(volumes(messages)) == MAX_HELD + 1
    assert h.event(answer(1, "AAPL", [rest_bar(M)])) == []  # too late: ignored
