"""``--metrics-port``: the run's counters, gauges and histograms in Prometheus' text format.

Served by a trio task rather than ``prometheus_client.start_http_server``'s thread, because the
counters are written on the trio thread: a scrape takes its snapshot there too, between two
frames, so it never walks a dict the transform is growing (a server thread calling
``Metrics.snapshot()`` could). Encoding then runs in a worker thread. The task starts with
``nursery.start`` (the caller learns the port, 0 picks a free one), stops with cancellation and
leaves no thread or bound port behind. Its HTTP is what a scraper needs: one GET per
connection, answered and closed.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import trio
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from finazon_trio.errors import ConfigurationError
from finazon_trio.observe.metrics import LATENCY_BUCKETS_MS, Metrics, SourceState, TickerRow
from finazon_trio.observe.stats import cumulative, part, queued
from finazon_trio.redaction import redact

logger = logging.getLogger(__name__)

PREFIX = "finazon_trio_"
#: Seconds a client has to send its request head, and the most bytes it may send.
REQUEST_TIMEOUT = 10.0
MAX_REQUEST_HEAD = 8192
#: Source states always exported (1 for the current one), so alerts can match on any of them.
STATES = tuple(SourceState)


class Snapshots(Protocol):
    """What a metrics endpoint serves: a run's :class:`Metrics`, or a worker's counters."""

    def snapshot(self) -> dict[str, Any]: ...


Families = Callable[[Mapping[str, Any]], Iterator[Metric]]


async def serve_metrics(
    metrics: Snapshots,
    port: int,
    *,
    host: str | None = None,
    families_of: Families | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``port`` (every interface unless ``host``) until cancelled.

    Start it with ``nursery.start``: it reports the bound port once it listens, or raises
    :class:`ConfigurationError` when the port cannot be bound. Cancellation closes the
    listeners and any connection being answered.
    """
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on port {port}: {exc.strerror or exc} "
            "(pick another --metrics-port)"
        ) from exc
    bound: int = listeners[0].socket.getsockname()[1]
    logger.info("Prometheus metrics at http://%s:%d/metrics", host or "0.0.0.0", bound)
    task_status.started(bound)
    handler = functools.partial(_serve_one, metrics, families_of or families)
    await trio.serve_listeners(handler, listeners)


async def _serve_one(metrics: Snapshots, families_of: Families, stream: trio.SocketStream) -> None:
    async with stream:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                head = await _read_head(stream)
                if head is not None:
                    await stream.send_all(await _respond(metrics, families_of, head))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the scraper went away


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk or len(data) + len(chunk) > MAX_REQUEST_HEAD:
            return None
        data += chunk
    return data


async def _respond(metrics: Snapshots, families_of: Families, head: bytes) -> bytes:
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, _, rest = request_line.partition(" ")
    path = rest.partition(" ")[0].partition("?")[0]
    if method not in ("GET", "HEAD"):
        return _response(405, "text/plain", b"only GET\n")
    if path != "/metrics":
        return _response(404, "text/plain", b"metrics are at /metrics\n")
    headers = dict(line.partition(":")[::2] for line in header_lines if line)
    accept = next((v.strip() for k, v in headers.items() if k.lower() == "accept"), "")
    if isinstance(metrics, Metrics):
        metrics.channels.sample()
    snap = metrics.snapshot()
    try:
        body, content_type = await trio.to_thread.run_sync(_encode, snap, accept, families_of)
    except Exception:
        logger.exception("could not encode the metrics")
        return _response(500, "text/plain", b"could not encode the metrics\n")
    return _response(200, content_type, b"" if method == "HEAD" else body, len(body))


def _response(status: int, content_type: str, body: bytes, length: int | None = None) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Server Error"}
    head = (
        f"HTTP/1.1 {status} {reason[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _encode(snap: Mapping[str, Any], accept: str, families_of: Families) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap, families_of))
    ProcessCollector(registry=registry)  # memory, CPU, open file descriptors
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


class SnapshotCollector(Collector):
    """The metric families of one snapshot (``Metrics.snapshot()`` after sampling channels)."""

    def __init__(self, snapshot: Mapping[str, Any], families_of: Families | None = None) -> None:
        self._snap = snapshot
        self._families = families_of or families

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._snap)


def families(snap: Mapping[str, Any]) -> Iterator[Metric]:
    """Every family, named by Prometheus conventions; missing fields read as zero."""
    src, tr, pub = part(snap, "source"), part(snap, "transform"), part(snap, "publisher")
    yield gauge(
        "run_info",
        "What this run reads and where it writes (value 1).",
        1,
        mode=str(snap.get("mode", "")),
        origin=redact(str(snap.get("origin") or src.get("endpoint") or "")),
        kafka_endpoint=str(pub.get("endpoint", "")),
        embedded_broker=str(bool(pub.get("embedded"))).lower(),
    )
    state = str(src.get("state", SourceState.STARTING))
    states = GaugeMetricFamily(
        PREFIX + "source_state", "1 for the source's state.", labels=["state"]
    )
    for name in dict.fromkeys((*STATES, state)):
        states.add_metric([name], 1 if name == state else 0)
    yield states
    yield from counters(
        src,
        frames="frames_received|WebSocket text frames received (or replayed).",
        connects="connects|Connections established.",
        reconnects="reconnects|Connections established after the first.",
        connect_failures="connect_failures|Connection attempts that failed.",
        disconnects="disconnects|Established connections that ended.",
        lines_read="replay_lines_read|Recording lines read.",
        corrupt_lines="replay_corrupt_lines|Recording lines skipped as corrupt.",
    )
    yield labelled(
        CounterMetricFamily,
        "connection_frames",
        "Text frames received on each connection slot (--connections).",
        "slot",
        src.get("slot_frames") or {},
    )
    yield gauge("replay_lines", "Lines in the recording being replayed.", src.get("lines_total", 0))
    yield gauge(
        "subscribed_tickers", "Tickers the server acknowledged.", len(src.get("subscribed") or ())
    )
    yield labelled(
        CounterMetricFamily,
        "ticker_errors",
        "Per-ticker errors from the server.",
        "symbol",
        src.get("ticker_errors") or {},
    )
    yield gauge(
        "last_frame_timestamp_seconds",
        "When the last frame arrived (Unix time).",
        src.get("last_message_ns", 0) / 1e9,
    )
    if src.get("next_attempt_at"):
        yield gauge(
            "next_connect_attempt_timestamp_seconds",
            "When the next connection attempt is due while backing off.",
            src["next_attempt_at"],
        )
    yield from counters(
        tr,
        bars="bars|Bar updates turned into messages.",
        protocol_messages="protocol_messages|Acknowledgements, heartbeats, other non-bar frames.",
        ticks="price_ticks|Price tick messages made.",
        volume_messages="volume_messages|Volume stream messages made.",
        dead_letters="dead_letters|Rejected frames sent to the dead-letter topic.",
        backfills="backfills|Backfills started after a disconnect (one per symbol per gap).",
        backfilled_bars="backfilled_bars|Missed minutes published from the REST API.",
        gaps="gaps|Gap records published: missed minutes that could not be filled.",
        gap_minutes="gap_minutes|Minutes covered by the gap records.",
        rest_rejects="rest_rejects|REST answers' bars (or bodies) rejected as invalid.",
    )
    yield gauge(
        "backfilling", "Backfills in flight (their symbols wait).", tr.get("backfilling", 0)
    )
    yield from counters(
        src,
        rest_calls="rest_calls|REST calls made for backfills.",
        rest_rate_limited="rest_rate_limited|REST calls answered 429.",
    )
    yield labelled(
        CounterMetricFamily,
        "rejects",
        "Frames rejected, by reason.",
        "reason",
        tr.get("rejects") or {},
    )
    yield gauge(
        "last_event_timestamp_seconds",
        "Event time of the last frame transformed.",
        tr.get("last_event_ms", 0) / 1000,
    )
    yield from _kafka(pub)
    fill = part(part(snap, "channels"), "fill")
    yield labelled(
        GaugeMetricFamily,
        "channel_buffer_used",
        "Items waiting in each channel.",
        "channel",
        {name: used for name, (used, _size) in fill.items()},
    )
    yield labelled(
        GaugeMetricFamily,
        "channel_buffer_capacity",
        "Each channel's buffer size.",
        "channel",
        {name: size for name, (_used, size) in fill.items()},
    )
    yield from _tickers(part(part(snap, "tickers"), "rows"))


def _kafka(pub: Mapping[str, Any]) -> Iterator[Metric]:
    yield from counters(
        pub,
        produced="messages_produced|Messages handed to the Kafka producer.",
        delivered="messages_delivered|Messages Kafka acknowledged.",
        failed="messages_failed|Messages that failed delivery.",
        backpressure_waits="backpressure_waits|Times the producer queue was full.",
    )
    yield gauge("messages_queued", "Produced, neither delivered nor failed yet.", queued(pub))
    if "backlog" in pub:
        yield gauge("backlog_messages", "Messages waiting on disk for Kafka.", pub["backlog"])
    yield histogram(
        "delivery_latency_seconds",
        "From producing a frame's last record to Kafka acknowledging it.",
        pub.get("ack_latency") or (),
    )
    yield histogram(
        "receipt_to_ack_latency_seconds",
        "From receiving a frame to Kafka acknowledging its records (live mode).",
        pub.get("receipt_latency") or (),
    )


def histogram(name: str, help_text: str, counts: Sequence[int]) -> HistogramMetricFamily:
    """A latency histogram kept as counts per ``LATENCY_BUCKETS_MS`` (the last bucket also
    holding anything slower), exported at every fourth bound: 1 ms, 2 ms, 4 ms... 32.8 s.

    No sum is kept, so the family has buckets only (no ``_sum``, ``_count``).
    """
    inner = LATENCY_BUCKETS_MS[:-1]
    counts = counts if len(counts) == len(LATENCY_BUCKETS_MS) else [0] * len(LATENCY_BUCKETS_MS)
    buckets = [
        ("+Inf" if bound == math.inf else repr(bound / 1000), float(count))
        for bound, count in cumulative(inner, counts, inner[::4])
    ]
    return HistogramMetricFamily(PREFIX + name, help_text, buckets=buckets)


def _tickers(rows: Mapping[str, TickerRow]) -> Iterator[Metric]:
    price = GaugeMetricFamily(PREFIX + "ticker_price", "Last close.", labels=["symbol"])
    updates = CounterMetricFamily(PREFIX + "ticker_updates", "Bar updates.", labels=["symbol"])
    ticks = CounterMetricFamily(PREFIX + "ticker_price_ticks", "Ticks made.", labels=["symbol"])
    seen = GaugeMetricFamily(
        PREFIX + "ticker_last_update_timestamp_seconds",
        "Event time of the last update.",
        labels=["symbol"],
    )
    for symbol, row in rows.items():
        price.add_metric([symbol], row.price)
        updates.add_metric([symbol], row.updates)
        ticks.add_metric([symbol], row.ticks)
        seen.add_metric([symbol], row.updated_at)
    yield from (price, updates, ticks, seen)


def counters(part: Mapping[str, Any], **fields: str) -> Iterator[Metric]:
    """A counter per field of ``part``: ``field="name|help text"``."""
    for field, spec in fields.items():
        name, _, help_text = spec.partition("|")
        yield CounterMetricFamily(PREFIX + name, help_text, value=part.get(field, 0))


def gauge(name: str, help_text: str, value: float, **labels: str) -> GaugeMetricFamily:
    """One gauge ``PREFIX + name``, with these labels."""
    family = GaugeMetricFamily(PREFIX + name, help_text, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    help_text: str,
    label: str,
    values: Mapping[str, float],
) -> Metric:
    """One family ``PREFIX + name`` with a sample per ``label`` value, sorted."""
    family = kind(PREFIX + name, help_text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([str(key)], value)
    return family
