"""The metrics endpoint, scraped over a real socket and parsed with Prometheus' own parser."""

from __future__ import annotations

import contextlib
import functools

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from finazon_trio.errors import ConfigurationError
from finazon_trio.observe.metrics import Metrics
from finazon_trio.observe.prometheus import REQUEST_TIMEOUT, serve_metrics

from ..helpers.metrics import record

LOOPBACK = "127.0.0.1"


def busy_metrics() -> Metrics:
    metrics = Metrics(mode="live", origin="wss://ws.finazon.io/v1?apikey=s3cr3t")
    metrics.source.state = "backing off"
    metrics.source.frames, metrics.source.reconnects = 1234, 2
    metrics.source.next_attempt_at = 1_731_162_668.5
    metrics.source.ticker_errors.update({"NOPE": 2})
    metrics.transform.bars, metrics.transform.ticks = 1200, 108_000
    metrics.transform.rejects.update({"stale": 3, "bad_json": 1})
    metrics.transform.last_event_ms = 1_731_162_665_250
    metrics.publisher.endpoint, metrics.publisher.embedded = "127.0.0.1:9092", True
    metrics.publisher.produced, metrics.publisher.delivered = 109_200, 109_000
    metrics.publisher.failed, metrics.publisher.queued = 50, 150
    for seconds in (0.002, 0.002, 0.004, 0.2, 3.0, 100.0):
        record(metrics.publisher.ack_latency, seconds)
    record(metrics.publisher.receipt_latency, 0.5)
    metrics.tickers.on_bar("AAPL", 1_731_162_600, 220.0, 220.5, 90, 1_731_162_665.25)
    return metrics


async def scrape(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send ``request`` and read the whole response: status line, headers, body."""
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    async with stream:
        await stream.send_all(request)
        response = b""
        while chunk := await stream.receive_some():
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


def get(path: str, accept: str = "") -> bytes:
    extra = f"Accept: {accept}\r\n" if accept else ""
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode()


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: list[Sample] = [
        sample
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    ]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in found}


async def start(nursery: trio.Nursery, metrics: Metrics) -> int:
    port: int = await nursery.start(functools.partial(serve_metrics, metrics, 0, host=LOOPBACK))
    return port


async def test_a_scrape_returns_every_counter_gauge_and_histogram() -> None:
    metrics = busy_metrics()
    send, _receive = trio.open_memory_channel[int](8)
    async with trio.open_nursery() as nursery:
        port = await start(nursery, metrics)
        metrics.channels.watch("outgoing", send)
        send.send_nowait(1)
        send.send_nowait(2)
        status, headers, body = await scrape(port, get("/metrics"))
        nursery.cancel_scope.cancel()
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body)
    values = samples(body)
    assert values[("finazon_trio_frames_received_total", ())] == 1234
    assert values[("finazon_trio_reconnects_total", ())] == 2
    assert values[("finazon_trio_source_state", (("state", "backing off"),))] == 1
    assert values[("finazon_trio_source_state", (("state", "subscribed"),))] == 0
    assert values[("finazon_trio_next_connect_attempt_timestamp_seconds", ())] == 1_731_162_668.5
    assert values[("finazon_trio_ticker_errors_total", (("symbol", "NOPE"),))] == 2
    assert values[("finazon_trio_bars_total", ())] == 1200
    assert values[("finazon_trio_price_ticks_total", ())] == 108_000
    assert values[("finazon_trio_rejects_total", (("reason", "stale"),))] == 3
    assert values[("finazon_trio_rejects_total", (("reason", "bad_json"),))] == 1
    assert values[("finazon_trio_last_event_timestamp_seconds", ())] == 1_731_162_665.25
    assert values[("finazon_trio_messages_produced_total", ())] == 109_200
    assert values[("finazon_trio_messages_delivered_total", ())] == 109_000
    assert values[("finazon_trio_messages_failed_total", ())] == 50
    assert values[("finazon_trio_messages_queued", ())] == 150
    assert values[("finazon_trio_channel_buffer_used", (("channel", "outgoing"),))] == 2
    assert values[("finazon_trio_channel_buffer_capacity", (("channel", "outgoing"),))] == 8
    assert values[("finazon_trio_ticker_price", (("symbol", "AAPL"),))] == 220.5
    assert values[("finazon_trio_ticker_updates_total", (("symbol", "AAPL"),))] == 1
    assert values[("finazon_trio_ticker_price_ticks_total", (("symbol", "AAPL"),))] == 90
    assert ("process_open_fds", ()) in values
    info = next(labels for (name, labels) in values if name == "finazon_trio_run_info")
    assert dict(info) == {
        "mode": "live",
        "origin": "wss://ws.finazon.io/v1?apikey=***",
        "kafka_endpoint": "127.0.0.1:9092",
        "embedded_broker": "true",
    }
    assert b"s3cr3t" not in body


async def test_latencies_are_cumulative_histograms_in_seconds() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, busy_metrics())
        _status, _headers, body = await scrape(port, get("/metrics"))
        nursery.cancel_scope.cancel()
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    delivery = families["finazon_trio_delivery_latency_seconds"]
    assert delivery.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in delivery.samples}
    assert list(buckets) == [repr(2**k / 1000) for k in range(16)] + ["+Inf"]
    assert (buckets["0.001"], buckets["0.002"], buckets["0.004"]) == (0, 2, 3)
    assert (buckets["0.256"], buckets["4.096"], buckets["32.768"], buckets["+Inf"]) == (4, 5, 5, 6)
    receipt = families["finazon_trio_receipt_to_ack_latency_seconds"]
    assert {s.labels["le"]: s.value for s in receipt.samples}["0.512"] == 1


async def test_each_scrape_reads_a_fresh_snapshot() -> None:
    metrics = Metrics()
    async with trio.open_nursery() as nursery:
        port = await start(nursery, metrics)
        first = samples((await scrape(port, get("/metrics")))[2])
        metrics.source.frames += 7
        metrics.transform.rejects["stale"] += 1
        second = samples((await scrape(port, get("/metrics?x=1")))[2])
        nursery.cancel_scope.cancel()
    assert first[("finazon_trio_frames_received_total", ())] == 0
    assert ("finazon_trio_rejects_total", (("reason", "stale"),)) not in first
    assert second[("finazon_trio_frames_received_total", ())] == 7
    assert second[("finazon_trio_rejects_total", (("reason", "stale"),))] == 1


async def test_openmetrics_is_served_to_a_scraper_that_asks_for_it() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, busy_metrics())
        accept = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        _status, headers, body = await scrape(port, get("/metrics", accept))
        nursery.cancel_scope.cancel()
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_other_paths_and_methods_and_bad_clients() -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, Metrics())
        assert (await scrape(port, get("/")))[0] == "HTTP/1.1 404 Not Found"
        post = b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await scrape(port, post))[0] == "HTTP/1.1 405 Method Not Allowed"
        status, headers, body = await scrape(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
        assert body == b""
        assert int(headers["content-length"]) > 1000
        # A client that hangs up before asking, or sends an endless head, harms nothing.
        stream = await trio.open_tcp_stream(LOOPBACK, port)
        await stream.aclose()
        async with await trio.open_tcp_stream(LOOPBACK, port) as stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 2000)
            with contextlib.suppress(trio.BrokenResourceError):  # reset: unread data
                assert await stream.receive_some() == b""
        assert (await scrape(port, get("/metrics")))[0] == "HTTP/1.1 200 OK"
        nursery.cancel_scope.cancel()


async def test_a_client_that_never_asks_is_dropped_after_the_request_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        port = await start(nursery, Metrics())
        async with await trio.open_tcp_stream(LOOPBACK, port) as stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\n")  # and nothing more
            start_time = trio.current_time()
            assert await stream.receive_some() == b""
            assert trio.current_time() - start_time == pytest.approx(REQUEST_TIMEOUT)
        nursery.cancel_scope.cancel()


async def test_a_busy_port_is_a_clear_configuration_error() -> None:
    (taken,) = await trio.open_tcp_listeners(0, host=LOOPBACK)
    port = taken.socket.getsockname()[1]
    async with taken:
        with pytest.raises(ConfigurationError, match=f"port {port}.*--metrics-port"):
            await serve_metrics(Metrics(), port, host=LOOPBACK)
