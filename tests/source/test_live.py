"""The live reader against the project's own server, over real sockets on loopback."""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from finazon_trio.errors import AuthenticationError, ConfigurationError
from finazon_trio.events import Lifecycle, Received, Sent, SourceEvent
from finazon_trio.observe.metrics import SourceMetrics, SourceState
from finazon_trio.settings import LiveSettings, Settings, Subscription
from finazon_trio.source.backoff import RetriesExhaustedError
from finazon_trio.source.live import live_source
from finazon_trio.source.protocol import MAX_EVENT_BYTES
from finazon_trio.transform.frames import Reject, parse_frame

from ..helpers.server import T0, server

KEY = "sekrit-api-key-4242"


def settings(port: int, tickers: tuple[str, ...] = ("AAPL", "MSFT"), **live: Any) -> Settings:
    return Settings(
        subscription=Subscription(tickers=tickers),
        live=LiveSettings(url=f"ws://127.0.0.1:{port}/v1", api_key=KEY, **live),
    )


@attrs.define
class Run:
    """A live source running in the background, and what it emitted so far."""

    metrics: SourceMetrics
    events: list[SourceEvent] = attrs.field(factory=list)
    error: BaseException | None = None

    def received(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, Received)]

    def sent(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, Sent)]

    def lifecycle(self) -> list[tuple[int, str, str]]:
        return [(e.conn, e.event, e.reason) for e in self.events if isinstance(e, Lifecycle)]


@asynccontextmanager
async def running(
    config: Settings, *, jitter: Callable[[], float] | None = None, buffer: int = 100_000
) -> AsyncIterator[Run]:
    """Run ``live_source`` while the block runs, collecting its events (cancelled at the end)."""
    run = Run(SourceMetrics())
    send, receive = trio.open_memory_channel[SourceEvent](buffer)

    scope = trio.CancelScope()

    async def source() -> None:
        with scope:
            try:
                await live_source(config, send, run.metrics, jitter=jitter)
            except (AuthenticationError, RetriesExhaustedError) as exc:
                run.error = exc

    async def collect() -> None:
        async for event in receive:  # until the source closes its channel
            run.events.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        nursery.start_soon(source)
        yield run
        scope.cancel()


async def wait_for(condition: Callable[[], bool]) -> None:
    """Wait (at most 10 virtual minutes) until ``condition()``, polling what other tasks write;
    the autojump clock makes each poll instant."""
    with trio.fail_after(600):
        while not condition():  # noqa: ASYNC110 - the conditions are metrics and logs
            await trio.sleep(0.05)


def bars(texts: list[str]) -> list[dict[str, Any]]:
    return [obj for obj in map(json.loads, texts) if "s" in obj]


async def test_subscribes_and_streams(autojump_clock: object) -> None:
    async with server() as (port, log), running(settings(port)) as run:
        await wait_for(lambda: len(bars(run.received())) >= 6)
        assert run.metrics.state == SourceState.SUBSCRIBED
        assert run.metrics.subscribed == {"AAPL", "MSFT"}
    first, second, third = run.events[:3]
    assert isinstance(first, Lifecycle)
    assert (first.conn, first.event) == (1, "connected")
    assert isinstance(second, Sent)
    assert json.loads(second.text) == {
        "event": "subscribe",
        "dataset": "us_stocks_essential",
        "channel": "bars",
        "frequency": "1s",
        "aggregation": "1m",
        "tickers": ["AAPL", "MSFT"],
    }
    assert isinstance(third, Received)
    assert json.loads(third.text)["code"] == "SUCCESS_SUBSCRIPTION"
    assert run.received() == log.clients[0].sent
    assert run.sent() == log.clients[0].received
    assert run.lifecycle()[-1] == (1, "disconnected", "shutdown")
    assert {e.conn for e in run.events} == {1}
    assert run.metrics.connects == 1
    assert run.metrics.reconnects == 0
    assert run.metrics.frames == len(run.received())
    assert run.metrics.last_message_ns == run.events[-2].t_ns
    assert run.metrics.state == "stopped"


async def test_ticker_errors_are_counted_and_the_rest_streams(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    tickers = ("AAPL", "NOPE", "bad one", "MSFT")
    async with (
        server(unknown_tickers=("NOPE",)) as (port, _),
        running(settings(port, tickers)) as run,
    ):
        await wait_for(lambda: len(bars(run.received())) >= 10)
    assert run.metrics.ticker_errors == Counter({"NOPE": 1, "bad one": 1})
    assert run.metrics.subscribed == set()  # after shutdown
    assert {bar["s"] for bar in bars(run.received())} == {"AAPL", "MSFT"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("refused ticker NOPE" in w for w in warnings)
    assert any("refused ticker bad one" in w for w in warnings)


async def test_heartbeats_and_their_replies(autojump_clock: object) -> None:
    async with server() as (port, _), running(settings(port, heartbeat_interval=5)) as run:
        await trio.sleep(26)
    assert run.sent().count('{"event":"heartbeat"}') == 5
    replies = [t for t in run.received() if json.loads(t).get("event") == "heartbeat"]
    assert len(replies) == 5


@pytest.mark.parametrize("style", ["flat", "wrapped", "legacy"])
async def test_every_frame_shape_passes_through(autojump_clock: object, style: str) -> None:
    async with (
        server(frame_style=style) as (port, log),
        running(settings(port)) as run,
    ):
        await wait_for(lambda: len(run.received()) >= 8)
    assert run.received() == log.clients[0].sent[: len(run.received())]
    assert run.metrics.state == "stopped"
    assert run.metrics.connects == 1


async def test_drops_reconnect_resubscribe_and_lose_nothing(autojump_clock: object) -> None:
    config = settings(port=0)
    async with server(drop_every=7.0, speed=20.0) as (port, log):
        config = settings(port, max_backoff=2.0)
        async with running(config) as run:
            await wait_for(lambda: run.metrics.connects >= 5)
            await wait_for(lambda: run.metrics.subscribed == {"AAPL", "MSFT"})
    assert [client.ended for client in log.clients[:4]] == ["drop"] * 4
    # Every frame the server sent arrived, once, in order: none lost across the drops.
    assert run.received() == log.sent()
    assert len(run.received()) > 4 * 7 * 20 * 2
    for number, client in enumerate(log.clients, 1):
        conn_received = [e.text for e in run.events if isinstance(e, Received) and e.conn == number]
        assert conn_received == client.sent
        assert json.loads(client.received[0])["event"] == "subscribe"  # resubscribed each time
    lifecycle = run.lifecycle()
    assert lifecycle[:3] == [
        (1, "connected", ""),
        (1, "disconnected", "connection lost (no closing handshake)"),
        (2, "connected", ""),
    ]
    assert run.metrics.reconnects == run.metrics.connects - 1 >= 4
    assert run.metrics.disconnects == run.metrics.connects
    assert run.metrics.connect_failures == 0


async def test_stall_is_detected_by_the_stale_timeout(autojump_clock: object) -> None:
    live: dict[str, Any] = {"stale_timeout": 9.0, "ping_interval": 1e3, "heartbeat_interval": 1e3}
    async with server(stall_after=5.0) as (port, log), running(settings(port, **live)) as run:
        await wait_for(lambda: run.metrics.state == SourceState.STALE)
        stale_at = trio.current_time()
        assert stale_at - log.clients[0].opened == pytest.approx(5.0 + 6.0, abs=1.01)
        await wait_for(lambda: run.metrics.connects == 2)
    assert run.lifecycle()[1] == (1, "disconnected", "stale: no message for 9 s")
    assert log.clients[1].received[0] == log.clients[0].received[0]  # resubscribed


async def test_a_message_after_a_quiet_spell_waits_for_room_and_is_kept(
    autojump_clock: object,
) -> None:
    """Quiet for 7 s (the warning comes at 6 s of a 9 s stale timeout), then one bar while the
    pipeline takes nothing: waiting for room is not silence, and the bar is not lost."""
    bar = json.dumps({"s": "AAPL", "t": T0, "o": 1, "h": 1, "l": 1, "c": 1, "v": 1})

    async def quiet_then_one_bar(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.get_message()  # the subscription
        await trio.sleep(7)
        await ws.send_message(bar)
        await trio.sleep_forever()

    live: dict[str, Any] = {"stale_timeout": 9.0, "ping_interval": 1e3, "heartbeat_interval": 1e3}
    metrics = SourceMetrics()
    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(serve_websocket, quiet_then_one_bar, "127.0.0.1", 0, None)
        send, receive = trio.open_memory_channel[SourceEvent](0)
        nursery.start_soon(live_source, settings(ws_server.port, **live), send, metrics)
        events = [await receive.receive() for _ in range(2)]  # connected, subscription sent
        await trio.sleep(20)  # nobody reads: the bar waits for room past the stale deadline
        events.append(await receive.receive())
        nursery.cancel_scope.cancel()
    assert isinstance(events[2], Received)
    assert events[2].text == bar
    assert metrics.connects == 1


async def test_stall_is_detected_by_the_ping_timeout(autojump_clock: object) -> None:
    live: dict[str, Any] = {"ping_interval": 2.0, "ping_timeout": 3.0, "heartbeat_interval": 1e3}
    async with server(stall_after=5.0) as (port, _), running(settings(port, **live)) as run:
        await wait_for(lambda: run.metrics.connects == 2)
    assert run.lifecycle()[1] == (1, "disconnected", "ping timeout: no pong within 3 s")


async def test_garbage_passes_through_without_breaking_the_reader(autojump_clock: object) -> None:
    async with (
        server(garbage_rate=0.3, seed=5) as (port, log),
        running(settings(port)) as run,
    ):
        await wait_for(lambda: len(run.received()) >= 300)
    assert run.received() == log.clients[0].sent[: len(run.received())]
    assert run.metrics.connects == 1
    parsed = [item for text in run.received() for item in parse_frame(text)]
    assert len([item for item in parsed if isinstance(item, Reject)]) > 30


@pytest.mark.parametrize(
    "options",
    [
        {"api_keys": ("another-key",)},
        {"reject_auth": True},
        {"reject_auth": True, "auth_failure": "message"},
        {"reject_auth": True, "auth_failure": "close"},
    ],
)
async def test_refused_key_is_final(autojump_clock: object, options: dict[str, Any]) -> None:
    async with server(**options) as (port, log):
        send, receive = trio.open_memory_channel[SourceEvent](100)
        metrics = SourceMetrics()
        with trio.fail_after(5), pytest.raises(AuthenticationError) as refused:
            await live_source(settings(port), send, metrics)
        assert len(log.clients) == 1  # exactly one attempt: no retry storm
        assert str(refused.value).startswith("Finazon refused the API key")
        assert KEY not in str(refused.value)
        assert metrics.state == "failed"
        events = [event async for event in receive]  # the channel was closed
        assert all(KEY not in repr(event) for event in events)


async def test_key_echoed_by_the_server_is_redacted(autojump_clock: object) -> None:
    async def echo_key(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message(json.dumps({"status": "error", "message": f"{request.path} bad"}))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(serve_websocket, echo_key, "127.0.0.1", 0, None)
        send, receive = trio.open_memory_channel[SourceEvent](100)
        with pytest.raises(AuthenticationError) as refused:
            await live_source(settings(ws_server.port), send, SourceMetrics())
        events = [event async for event in receive]
        nursery.cancel_scope.cancel()
    assert "apikey=***" in events[1].text if isinstance(events[1], Received) else False
    assert all(KEY not in repr(event) for event in events)
    assert KEY not in str(refused.value)


async def test_missing_key_or_tickers_fail_before_connecting() -> None:
    for config in (
        Settings(subscription=Subscription(tickers=("AAPL",))),
        Settings(live=LiveSettings(api_key=KEY)),
    ):
        send, receive = trio.open_memory_channel[SourceEvent](1)
        with pytest.raises(ConfigurationError):
            await live_source(config, send, SourceMetrics())
        with pytest.raises(trio.EndOfChannel):
            receive.receive_nowait()


class Jitter:
    """An injected ``random.random``: fixed values, one per retry."""

    def __init__(self, values: list[float]) -> None:
        self.values = iter(values)

    def __call__(self) -> float:
        return next(self.values)


async def refusing_server(
    attempts: list[float], *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer every WebSocket handshake with HTTP 503, noting when each attempt came."""

    async def handler(stream: trio.SocketStream) -> None:
        attempts.append(trio.current_time())
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


async def test_backoff_timings_are_exact(autojump_clock: object) -> None:
    attempts: list[float] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(refusing_server, attempts)
        config = settings(port, max_backoff=4.0, max_retries=5)
        send, receive = trio.open_memory_channel[SourceEvent](100)
        metrics = SourceMetrics()
        with pytest.raises(RetriesExhaustedError) as gave_up:
            await live_source(config, send, metrics, jitter=Jitter([0.5] * 5 + [1.0]))
        nursery.cancel_scope.cancel()
    assert [event async for event in receive] == []  # never connected; channel closed
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # Full jitter of 0.5 times 1, 2, 4 s, then the 4 s cap: first retry within a second.
    assert gaps == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert "after 5 retries" in str(gave_up.value)
    assert "HTTP 503" in str(gave_up.value)
    assert metrics.connect_failures == 6
    assert metrics.connects == 0
    assert metrics.state == "failed"


async def test_backing_off_shows_in_the_metrics(autojump_clock: object) -> None:
    attempts: list[float] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(refusing_server, attempts)
        async with running(settings(port), jitter=Jitter([0.75] * 10)) as run:
            await wait_for(lambda: len(attempts) == 2)
            await wait_for(lambda: run.metrics.state == SourceState.BACKING_OFF)
            assert run.metrics.next_attempt_at is not None
        nursery.cancel_scope.cancel()
    assert run.metrics.next_attempt_at is None


@pytest.mark.parametrize(("drop_every", "expected"), [(30.0, [0.5, 1.0, 2.0]), (65.0, [0.5] * 3)])
async def test_backoff_resets_after_a_healthy_minute(
    autojump_clock: object, drop_every: float, expected: list[float]
) -> None:
    async with (
        server(drop_every=drop_every) as (port, log),
        running(settings(port), jitter=Jitter([0.5] * 10)) as run,
    ):
        await wait_for(lambda: run.metrics.connects == 4)
    opened = [client.opened for client in log.clients]
    gaps = [b - a - drop_every for a, b in itertools.pairwise(opened)]
    assert gaps == pytest.approx(expected, abs=1e-9)


async def test_huge_subscriptions_are_split_under_100_kb(autojump_clock: object) -> None:
    tickers = tuple(f"T{i:07d}" for i in range(40_000))
    async with (
        server(speed=0.001) as (port, log),  # no bars for a long while: only the subscription
        running(settings(port, tickers)) as run,
    ):
        await wait_for(lambda: len(run.metrics.subscribed) == len(tickers))
    subscribes = run.sent()
    assert len(subscribes) > 4
    assert all(len(text.encode()) <= MAX_EVENT_BYTES for text in subscribes)
    assert [t for text in subscribes for t in json.loads(text)["tickers"]] == list(tickers)
    assert not [t for t in log.clients[0].sent if '"error"' in t]


async def test_client_events_stay_under_100_a_minute(autojump_clock: object) -> None:
    async with (
        server() as (port, log),
        running(settings(port, heartbeat_interval=0.1)) as run,
    ):
        await trio.sleep(185)
    assert len(run.sent()) > 250  # it kept sending, at the limit
    times = log.clients[0].received_at
    assert len(times) == len(run.sent())
    most = max(sum(1 for t in times[i:] if t < start + 60) for i, start in enumerate(times))
    assert 80 <= most < 100
    assert not [t for t in log.clients[0].sent if "Too many requests" in t]


async def test_connections_split_the_tickers(autojump_clock: object) -> None:
    tickers = ("AAPL", "MSFT", "GOOGL", "AMZN", "TSLA", "NVDA", "META")
    async with server() as (port, log), running(settings(port, tickers, connections=3)) as run:
        await wait_for(lambda: run.metrics.subscribed == set(tickers))
        assert run.metrics.state == SourceState.SUBSCRIBED
        await wait_for(lambda: {bar["s"] for bar in bars(run.received())} == set(tickers))
        assert set(run.metrics.slot_states) == {1, 2, 3}
    subscriptions = [json.loads(client.received[0])["tickers"] for client in log.clients]
    assert sorted(len(s) for s in subscriptions) == [2, 2, 3]
    assert sorted(t for s in subscriptions for t in s) == sorted(tickers)
    assert sorted(conn for conn, event, _ in run.lifecycle() if event == "connected") == [1, 2, 3]
    by_conn: dict[int, set[str]] = {}
    for event in run.events:
        if isinstance(event, Received) and '"s"' in event.text:
            by_conn.setdefault(event.conn, set()).add(json.loads(event.text)["s"])
    assert sorted(map(len, by_conn.values())) == [2, 2, 3]


async def test_the_key_never_reaches_events_logs_or_metrics(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        server(drop_every=3.0, garbage_rate=0.2, unknown_tickers=("NOPE",)) as (port, _),
        running(settings(port, ("AAPL", "NOPE"), max_backoff=1.0)) as run,
    ):
        await wait_for(lambda: run.metrics.connects >= 3)
    assert run.metrics.endpoint == f"ws://127.0.0.1:{port}/v1?apikey=***"
    assert KEY not in caplog.text
    assert "apikey=***" in caplog.text
    assert all(KEY not in repr(event) for event in run.events)
    assert KEY not in repr(run.metrics)


async def test_shutdown_emits_a_last_disconnected_and_closes_the_channel() -> None:
    async with server() as (port, _):
        send, receive = trio.open_memory_channel[SourceEvent](100)
        scope = trio.CancelScope()

        async def source() -> None:
            with scope:
                await live_source(settings(port), send, SourceMetrics())

        events = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source)
            async for event in receive:  # ends when the source closes its channel
                events.append(event)
                if isinstance(event, Received) and '"s"' in event.text:
                    scope.cancel()
    last = events[-1]
    assert isinstance(last, Lifecycle)
    assert (last.event, last.reason) == ("disconnected", "shutdown")


async def test_a_slow_pipeline_pushes_back_without_killing_the_connection(
    autojump_clock: object,
) -> None:
    live: dict[str, Any] = {"ping_interval": 2.0, "ping_timeout": 1.0, "stale_timeout": 10.0}
    async with server(speed=200.0) as (port, log):
        send, receive = trio.open_memory_channel[SourceEvent](0)
        metrics = SourceMetrics()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(live_source, settings(port, **live), send, metrics)
            events = [await receive.receive() for _ in range(10)]  # subscribed, streaming
            await trio.sleep(30)  # nobody reads: the socket's buffers fill, pongs stop
            events += [await receive.receive() for _ in range(5_000)]
            nursery.cancel_scope.cancel()
    assert metrics.connects == 1  # no ping or stale timeout blamed on the server
    received = [e.text for e in events if isinstance(e, Received)]
    assert received == log.clients[0].sent[: len(received)]
