"""The REST client of backfills, against httpx's mock transport on the autojump clock: the
request it makes, paging, the call budget, 429 backoff, the timeout, and what it records."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import httpx
import trio

from finazon_trio.events import BackfillRequest, RestResult, SourceEvent
from finazon_trio.observe.metrics import SourceMetrics
from finazon_trio.settings import BackfillSettings, Subscription
from finazon_trio.source.rest import RestClient

KEY = "rest-client-secret"
M = 1_731_079_980


def client(
    handler: Callable[[httpx.Request], httpx.Response], **settings: object
) -> tuple[RestClient, SourceMetrics]:
    metrics = SourceMetrics()
    rest = RestClient(
        BackfillSettings(rest_url="https://api.example/latest", **settings),  # type: ignore[arg-type]
        KEY,
        Subscription(dataset="us_stocks_essential"),
        metrics,
        transport=httpx.MockTransport(handler),
        jitter=lambda: 1.0,
    )
    return rest, metrics


async def backfill(rest: RestClient, *requests: BackfillRequest) -> list[RestResult]:
    send, receive = trio.open_memory_channel[SourceEvent](10)
    results: list[RestResult] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(rest.run, send)
        for request in requests:
            rest.submit(request)
        for _ in requests:
            result = await receive.receive()
            assert isinstance(result, RestResult)
            results.append(result)
        nursery.cancel_scope.cancel()
    return results


def bars(count: int) -> httpx.Response:
    data = [{"t": M + 60 * i, "o": 1, "h": 1, "l": 1, "c": 1, "v": 1} for i in range(count)]
    return httpx.Response(200, json={"data": data})


async def test_the_request_carries_the_key_only_in_its_header(autojump_clock: object) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return bars(3)

    rest, metrics = client(handler)
    (result,) = await backfill(rest, BackfillRequest(1, "AAPL", M, M + 120))
    (request,) = seen
    assert request.url.path == "/latest/finazon/us_stocks_essential/time_series"
    assert dict(request.url.params) == {
        "ticker": "AAPL",
        "interval": "1m",
        "start_at": str(M),
        "end_at": str(M + 120),
        "order": "asc",
        "page_size": "1000",
        "page": "0",
    }
    assert request.headers["authorization"] == f"apikey {KEY}"
    assert KEY not in str(request.url)
    assert (result.backfill, result.symbol, result.error) == (1, "AAPL", "")
    (exchange,) = result.exchanges
    assert exchange.status == 200
    assert len(json.loads(exchange.body)["data"]) == 3
    assert KEY not in repr(result)
    assert metrics.rest_calls == 1


async def test_full_pages_are_followed(autojump_clock: object) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return bars(1000) if request.url.params["page"] == "0" else bars(5)

    rest, metrics = client(handler)
    (result,) = await backfill(rest, BackfillRequest(1, "AAPL", M, M + 1004 * 60))
    assert [x.params["page"] for x in result.exchanges] == ["0", "1"]
    assert metrics.rest_calls == 2


async def test_429_is_retried_after_a_backoff(autojump_clock: object) -> None:
    answers = [httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(429), bars(1)]
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        return answers.pop(0)

    rest, metrics = client(handler, timeout=10.0)
    (result,) = await backfill(rest, BackfillRequest(1, "AAPL", M, M))
    assert [x.status for x in result.exchanges] == [429, 429, 200]
    assert result.error == ""
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [2.0, 1.0]
    assert metrics.rest_rate_limited == 2


async def test_the_budget_and_the_timeout_bound_the_wait(autojump_clock: object) -> None:
    """One call a minute: the second symbol's request waits for the budget until the timeout
    and ends ``rate_limited``; a slow answer ends ``timeout``, the call recorded as cut."""
    rest, _ = client(lambda request: bars(1), calls_per_minute=1, timeout=2.0)
    first, second = await backfill(
        rest, BackfillRequest(1, "AAPL", M, M), BackfillRequest(2, "MSFT", M, M)
    )
    assert (first.symbol, first.error) == ("AAPL", "")
    assert (second.symbol, second.error, second.exchanges) == ("MSFT", "rate_limited", ())

    async def slow(request: httpx.Request) -> httpx.Response:
        await trio.sleep(5)
        return bars(1)

    rest, _ = client(slow, timeout=2.0)  # type: ignore[arg-type]
    (result,) = await backfill(rest, BackfillRequest(3, "AAPL", M, M))
    assert result.error == "timeout"
    assert [(x.status, x.error) for x in result.exchanges] == [(0, "timeout")]


async def test_a_network_failure_is_recorded(autojump_clock: object) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    rest, _ = client(handler)
    (result,) = await backfill(rest, BackfillRequest(1, "AAPL", M, M))
    (exchange,) = result.exchanges
    assert exchange.status == 0
    assert exchange.error.startswith("network: ConnectError")
