"""The test brokers: which ones the tests run against, and talking to them directly with plain
confluent-kafka clients (sync, blocking; :func:`consume_topics` runs them in threads)."""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable
from typing import Any

import attrs
import jsonschema
import pytest
import trio
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka import Message as KafkaMessage
from confluent_kafka.admin import AdminClient, NewTopic

from finazon_trio import schemas
from finazon_trio.events import Headers, Message
from finazon_trio.settings import Output
from scripts.apache_kafka import ApacheKafka as ApacheKafka  # re-exported for the tests
from scripts.apache_kafka import free_port as free_port

#: ``host:port`` of a cluster to run the tests against, instead of the brokers they start.
EXTERNAL = os.environ.get("KAFKA_TEST_BOOTSTRAP")
#: The parameters of the ``kafka_bootstrap`` fixture: each test that takes it runs once per
#: broker.
BROKERS = (
    [pytest.param("external", id="external")]
    if EXTERNAL
    else [pytest.param("apache", id="apache-kafka"), pytest.param("embedded", id="embedded")]
)
#: For tests about the command rather than the broker: one broker is enough.
one_broker = pytest.mark.parametrize("kafka_bootstrap", [BROKERS[-1]], indirect=True)

_topic_numbers = itertools.count()


def unique_topic(prefix: str) -> str:
    """A topic name no other test (or earlier run against the same cluster) uses.

    The prefix also names the topic's schema (:func:`schema_for`): records consumed from a
    topic whose prefix has the word ``ticks``, ``volume`` (with ``raw``: raw bars), ``dead`` or
    ``gaps`` are checked against it. Topics of other records need other words."""
    return f"{prefix}-{os.getpid()}-{time.time_ns() // 1000}-{next(_topic_numbers)}"


_UNIQUE_SUFFIX = re.compile(r"-\d+-\d+-\d+$")


def schema_for(topic: str) -> str | None:
    """The declared schema of ``topic``'s records, by the words of its name (without
    :func:`unique_topic`'s suffix): ``price_ticks``, ``cli-ticks``: ``price-tick``;
    ``volume_stream``, ``e2e-volume``: ``volume-stream``; ``e2e-raw-volume``:
    ``volume-stream-raw``; ``e2e-dead``: ``dead-letter``; ``stream_gaps``: ``gap``;
    ``finazon_frames``: ``frames``; None for any other name."""
    words = set(re.split(r"[-_.]", _UNIQUE_SUFFIX.sub("", topic)))
    if "dead" in words:
        return "dead-letter"
    if "gaps" in words or "gap" in words:
        return "gap"
    if "frames" in words:
        return "frames"
    if "volume" in words:
        return "volume-stream-raw" if "raw" in words else "volume-stream"
    if "ticks" in words:
        return "price-tick"
    return None


def assert_fits_schema(topic: str, record: Record) -> None:
    """Fail unless ``record`` fits its topic's declared schema (if the topic has one)."""
    name = schema_for(topic)
    if name is None:
        return
    try:
        schemas.validate_record(name, record.key, record.value, record.headers)
    except ValueError as exc:  # not JSON, or not UTF-8
        raise AssertionError(f"{topic} offset {record.offset}: not a {name} record: {exc}") from exc
    except jsonschema.ValidationError as exc:
        raise AssertionError(
            f"{topic} offset {record.offset} does not fit the {name} schema: {exc}"
        ) from exc


def unique_output(prefix: str, **options: Any) -> Output:
    """Output settings whose two topics (``PREFIX-ticks``, ``PREFIX-volume``) no other test
    uses; ``options`` are the other settings."""
    return Output(
        price_ticks_topic=unique_topic(f"{prefix}-ticks"),
        volume_stream_topic=unique_topic(f"{prefix}-volume"),
        **options,
    )


@attrs.frozen
class Record:
    """A record as consumed back from Kafka."""

    key: bytes | None
    value: bytes
    timestamp: int  # epoch ms
    headers: Headers  # [] when the record has none
    partition: int
    offset: int


def consume_all(
    bootstrap: str, topic: str, count: int, timeout: float = 60.0, *, settle: float = 1.0
) -> list[Record]:
    """Every record of ``topic``, in offset order per partition (partitions in order).

    Reads all partitions from the beginning until ``count`` records have arrived, then for
    ``settle`` more seconds, so that extra records show up in the result. Fails the test if
    fewer than ``count`` arrive within ``timeout`` seconds, or if a record does not fit its
    topic's declared schema (:func:`schema_for`).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_topic("test-consumer"),
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    records: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        partitions = _partitions(consumer, topic, deadline)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        settled_at: float | None = None
        while True:
            now = time.monotonic()
            if settled_at is None and len(records) >= count:
                settled_at = now + settle
            if settled_at is not None and now >= settled_at:
                break
            if settled_at is None and now >= deadline:
                raise AssertionError(
                    f"only {len(records)} of {count} records arrived in {topic} "
                    f"within {timeout:g} s"
                )
            for message in consumer.consume(1000, timeout=0.2):
                error = message.error()
                if error is not None:
                    raise AssertionError(f"consuming {topic} failed: {error.str()}")
                records.append(_record(message))
    finally:
        consumer.close()
    for record in records:
        assert_fits_schema(topic, record)
    return sorted(records, key=lambda r: (r.partition, r.offset))


async def consume_topics(bootstrap: str, counts: dict[str, int]) -> dict[str, list[Record]]:
    """``consume_all`` of each topic (``{topic: expected count}``), all at once in threads."""
    records: dict[str, list[Record]] = {}

    async def consume(topic: str, count: int) -> None:
        records[topic] = await trio.to_thread.run_sync(consume_all, bootstrap, topic, count)

    async with trio.open_nursery() as nursery:
        for topic, count in counts.items():
            nursery.start_soon(consume, topic, count)
    return records


def _partitions(consumer: Consumer, topic: str, deadline: float) -> list[int]:
    while True:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is not None and metadata.error is None and metadata.partitions:
            return sorted(metadata.partitions)
        if time.monotonic() > deadline:
            raise AssertionError(f"topic {topic} does not exist")
        time.sleep(0.2)


def _record(message: KafkaMessage) -> Record:
    value = message.value()
    key = message.key()
    partition, offset = message.partition(), message.offset()
    assert isinstance(value, bytes)
    assert partition is not None
    assert offset is not None
    return Record(
        key=key if isinstance(key, bytes) else None,
        value=value,
        timestamp=message.timestamp()[1],
        headers=message.headers() or [],
        partition=partition,
        offset=offset,
    )


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> str:
    """Create ``topic`` (the test brokers do not create topics on first use); returns it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=30)
    return topic


def produce_all(bootstrap: str, messages: list[Message], timeout: float = 30.0) -> None:
    """Produce ``messages`` with a plain idempotent producer and fail unless all are delivered."""
    errors: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            errors.append(error)

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    produce: Callable[..., None] = producer.produce
    for topic, key, value, timestamp, headers in messages:
        produce(topic, value, key, timestamp=timestamp, headers=headers, on_delivery=on_delivery)
    left = producer.flush(timeout)
    assert not errors, errors
    assert left == 0, f"{left} messages not delivered within {timeout} s"
