"""The Kafka publisher against real brokers: order, integrity, backpressure, flush, failures."""

from __future__ import annotations

import logging
from collections import defaultdict

import pytest
import trio
from confluent_kafka.admin import AdminClient

from finazon_trio.errors import ConfigurationError, KafkaError
from finazon_trio.events import Headers, Message, Outgoing
from finazon_trio.observe.metrics import LATENCY_BUCKETS_MS, PublisherMetrics
from finazon_trio.settings import KafkaSettings
from finazon_trio.sink.admin import Config, ensure_topics, wait_for_kafka
from finazon_trio.sink.publisher import (
    PRODUCER_DEFAULTS,
    Publisher,
    producer_config,
)

from ..helpers.kafka import consume_all, free_port, unique_topic

SYMBOLS = [b"AAPL", b"MSFT", b"BRK.B", b"TSLA"]
T0_MS = 1_731_080_000_000


def config_for(bootstrap: str, **overrides: str) -> Config:
    return producer_config(KafkaSettings(config=tuple(overrides.items())), bootstrap)


def unreachable() -> str:
    """An endpoint where nothing listens."""
    return f"127.0.0.1:{free_port()}"


def batches(ticks: str, volume: str, frames: int, points: int = 30) -> list[Outgoing]:
    """``frames`` Outgoing batches shaped like the transform's: ``points`` ticks and one
    volume message per frame, symbols taking turns, some with headers."""
    out = []
    for f in range(frames):
        symbol = SYMBOLS[f % len(SYMBOLS)]
        ts = T0_MS + f * 1000
        messages: list[Message] = [
            (ticks, symbol, b'{"frame":%d,"i":%d}' % (f, i), ts - 1000 + (i * 1000) // points, None)
            for i in range(1, points + 1)
        ]
        headers: Headers | None = [("frame", b"%d" % f), ("empty", b"")] if f % 3 == 0 else None
        messages.append((volume, symbol, b'{"frame":%d}' % f, ts, headers))
        out.append(Outgoing(t_ns=ts * 1_000_000, messages=messages))
    return out


async def publish(
    config: Config, outgoing: list[Outgoing], flush_timeout: float = 30.0
) -> tuple[Publisher, PublisherMetrics]:
    metrics = PublisherMetrics()
    publisher = Publisher(config, metrics, flush_timeout)
    send, receive = trio.open_memory_channel[Outgoing](8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run, receive)
        async with send:
            for batch in outgoing:
                await send.send(batch)
    return publisher, metrics


def by_key(messages: list[Message]) -> dict[bytes, list[tuple[bytes, int, Headers]]]:
    grouped: dict[bytes, list[tuple[bytes, int, Headers]]] = defaultdict(list)
    for _topic, key, value, ts, headers in messages:
        grouped[key].append((value, ts, headers or []))
    return grouped


def test_producer_config_defaults_and_overrides() -> None:
    kafka = KafkaSettings(config=(("linger.ms", "5"), ("security.protocol", "SASL_SSL")))
    config = producer_config(kafka, "broker:9092")
    assert config["bootstrap.servers"] == "broker:9092"
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["compression.type"] == "lz4"
    assert config["linger.ms"] == "5"  # passed through verbatim
    assert config["security.protocol"] == "SASL_SSL"
    assert producer_config(KafkaSettings(), "b:1")["linger.ms"] == PRODUCER_DEFAULTS["linger.ms"]


def test_latency_histograms_have_a_count_per_bucket() -> None:
    metrics = PublisherMetrics()
    assert len(metrics.ack_latency) == len(metrics.receipt_latency) == len(LATENCY_BUCKETS_MS)


async def test_every_message_arrives_once_in_order_and_intact(kafka_bootstrap: str) -> None:
    # Not the output contract's records: topic names that no declared schema applies to.
    ticks, volume = unique_topic("publisher-a"), unique_topic("publisher-b")
    config = config_for(kafka_bootstrap)
    await ensure_topics(config, [ticks, volume], partitions=3, replication_factor=1)
    outgoing = batches(ticks, volume, frames=200)

    publisher, metrics = await publish(config, outgoing)

    sent = [m for batch in outgoing for m in batch.messages]
    assert metrics.produced == metrics.delivered == len(sent)
    assert metrics.failed == 0
    assert publisher.unflushed == 0
    assert sum(metrics.ack_latency) == len(outgoing)  # one sample per Outgoing
    for topic in (ticks, volume):
        want = [m for m in sent if m[0] == topic]
        records = consume_all(kafka_bootstrap, topic, len(want))
        assert len(records) == len(want)
        got = by_key([(topic, r.key or b"", r.value, r.timestamp, r.headers) for r in records])
        assert got == by_key(want)
        partitions = {r.key: {x.partition for x in records if x.key == r.key} for r in records}
        assert all(len(p) == 1 for p in partitions.values())  # a symbol stays in one partition


async def test_topics_are_created_with_the_requested_partitions(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_for(kafka_bootstrap)
    four, two = unique_topic("four"), unique_topic("two")
    await ensure_topics(config, [four, two, four], partitions=4, replication_factor=1)
    await ensure_topics(config, [two], partitions=4, replication_factor=1)  # exists: fine
    with caplog.at_level(logging.WARNING):
        await ensure_topics(config, [four], partitions=2, replication_factor=1)
    assert f"topic {four} already exists with 4 partitions (not 2)" in caplog.text

    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert len(topics[four].partitions) == 4
    assert len(topics[two].partitions) == 4


async def test_topics_that_cannot_be_created_raise(strict_bootstrap: str) -> None:
    config = config_for(strict_bootstrap)
    topic = unique_topic("replicated")
    with pytest.raises(KafkaError, match=f"cannot create topics on Kafka at .*{topic}"):
        await ensure_topics(config, [topic], partitions=1, replication_factor=3)


async def test_a_full_local_queue_is_backpressure_not_loss(kafka_bootstrap: str) -> None:
    topic = unique_topic("tiny-queue")
    config = config_for(kafka_bootstrap, **{"queue.buffering.max.messages": "50"})
    await ensure_topics(config, [topic], partitions=2, replication_factor=1)
    big = Outgoing(0, [(topic, b"K%d" % (i % 7), b"%d" % i, T0_MS + i, None) for i in range(3000)])
    outgoing = [big, *batches(topic, topic, frames=20)]

    publisher, metrics = await publish(config, outgoing)

    sent = [m for batch in outgoing for m in batch.messages]
    assert metrics.backpressure_waits > 0
    assert metrics.produced == metrics.delivered == len(sent)
    assert publisher.unflushed == 0
    records = consume_all(kafka_bootstrap, topic, len(sent))
    got = by_key([(topic, r.key or b"", r.value, r.timestamp, r.headers) for r in records])
    assert got == by_key(sent)


async def test_cancelling_the_publisher_flushes_what_it_produced(kafka_bootstrap: str) -> None:
    topic = unique_topic("cancelled")
    # A long linger keeps the messages queued locally until the flush sends them.
    config = config_for(kafka_bootstrap, **{"linger.ms": "10000"})
    await ensure_topics(config, [topic], partitions=1, replication_factor=1)
    metrics = PublisherMetrics()
    publisher = Publisher(config, metrics, flush_timeout=30)
    send, receive = trio.open_memory_channel[Outgoing](1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run, receive)
        for batch in batches(topic, topic, frames=1000):
            await send.send(batch)
            if metrics.produced >= 3000:
                break
        await trio.sleep(0.2)  # let the poll thread report; nothing can be delivered yet
        delivered_at_cancel = metrics.delivered
        nursery.cancel_scope.cancel()

    assert delivered_at_cancel < metrics.produced
    assert metrics.delivered == metrics.produced >= 3000
    assert metrics.failed == publisher.unflushed == 0
    assert len(consume_all(kafka_bootstrap, topic, metrics.produced)) == metrics.produced


async def test_what_the_flush_deadline_leaves_is_reported_unflushed() -> None:
    topic = unique_topic("nowhere")
    config = config_for(unreachable(), **{"message.timeout.ms": "60000"})
    outgoing = batches(topic, topic, frames=5)
    publisher, metrics = await publish(config, outgoing, flush_timeout=0.5)
    assert metrics.produced == publisher.unflushed == 5 * 31
    assert metrics.delivered == metrics.failed == 0
    # kept whole, for whoever wants to publish them later
    sent = [m for batch in outgoing for m in batch.messages]
    assert sorted(f.message for f in publisher.failures) == sorted(sent)


async def test_failed_deliveries_are_counted_and_kept() -> None:
    topic = unique_topic("nowhere")
    config = config_for(unreachable(), **{"message.timeout.ms": "500"})
    outgoing = batches(topic, topic, frames=3)
    publisher, metrics = await publish(config, outgoing, flush_timeout=30)
    sent = [m for batch in outgoing for m in batch.messages]
    assert metrics.failed == metrics.produced == len(sent)
    assert metrics.delivered == publisher.unflushed == 0
    assert sorted(f.message for f in publisher.failures) == sorted(sent)
    assert all("timed out" in f.error for f in publisher.failures)


async def test_a_topic_that_does_not_exist_fails_delivery(strict_bootstrap: str) -> None:
    topic = unique_topic("missing")  # the test brokers have auto.create.topics.enable=false
    config = config_for(strict_bootstrap, **{"message.timeout.ms": "3000"})
    publisher, metrics = await publish(config, batches(topic, topic, frames=2))
    assert metrics.failed == metrics.produced == 2 * 31
    assert metrics.delivered == 0
    assert len(publisher.failures) == 2 * 31


async def test_a_message_refused_at_produce_time_fails_alone(kafka_bootstrap: str) -> None:
    topic = unique_topic("too-large")
    config = config_for(kafka_bootstrap, **{"message.max.bytes": "10000"})
    await ensure_topics(config, [topic], partitions=1, replication_factor=1)
    huge: Message = (topic, b"AAPL", b"x" * 20_000, T0_MS, None)
    outgoing = batches(topic, topic, frames=2)
    outgoing.insert(1, Outgoing(0, [huge]))

    publisher, metrics = await publish(config, outgoing)

    assert metrics.failed == 1
    assert [f.message for f in publisher.failures] == [huge]
    assert metrics.delivered == metrics.produced - 1 == 2 * 31
    assert len(consume_all(kafka_bootstrap, topic, 2 * 31)) == 2 * 31


async def test_wait_for_kafka_names_an_endpoint_that_does_not_answer() -> None:
    endpoint = unreachable()
    with pytest.raises(
        KafkaError, match=f"Kafka at {endpoint} did not answer within 1 s: .*refused"
    ):
        await wait_for_kafka(config_for(endpoint), 1.0)


async def test_wait_for_kafka_returns_when_the_cluster_answers(kafka_bootstrap: str) -> None:
    await wait_for_kafka(config_for(kafka_bootstrap), 30.0)


async def test_invalid_settings_are_a_configuration_error() -> None:
    config = config_for("127.0.0.1:9", **{"no.such.setting": "1"})
    with pytest.raises(ConfigurationError, match=r"no\.such\.setting"):
        Publisher(config, PublisherMetrics(), 1.0)
    with pytest.raises(ConfigurationError, match=r"no\.such\.setting"):
        await wait_for_kafka(config, 1.0)
