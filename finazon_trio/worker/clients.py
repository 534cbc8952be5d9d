"""The worker's Kafka clients: their settings, and the errors that end a worker."""

from __future__ import annotations

from typing import Final

import confluent_kafka

from finazon_trio.errors import KafkaError
from finazon_trio.sink.admin import Config
from finazon_trio.worker.config import WorkerSettings

#: The producer: ticks of a frame go out together; the transaction commit flushes anyway.
PRODUCER_DEFAULTS: Final[Config] = {
    "client.id": "finazon-trio-expand",
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 200_000,
}
#: How long the broker lets a transaction stay open before it aborts it (at least ten commit
#: intervals): how long a worker that died without a stable ``--worker-id`` holds back
#: ``read_committed`` readers of what it wrote (Kafka Streams' default for exactly once). It
#: also bounds a message's delivery: an outage longer than this aborts and rewinds.
TRANSACTION_TIMEOUT_MS: Final = 10_000
CONSUMER_DEFAULTS: Final[Config] = {
    "client.id": "finazon-trio-expand",
    "isolation.level": "read_committed",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    "statistics.interval.ms": 1000,
}
FENCED: Final = frozenset(
    {
        confluent_kafka.KafkaError._FENCED,
        confluent_kafka.KafkaError.PRODUCER_FENCED,
        confluent_kafka.KafkaError.INVALID_PRODUCER_EPOCH,
        confluent_kafka.KafkaError.FENCED_INSTANCE_ID,
    }
)
#: Produce errors that no retry cures: the worker stops (its transaction is never committed).
REFUSED: Final = frozenset(
    {
        confluent_kafka.KafkaError._UNKNOWN_TOPIC,
        confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
        confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED,
        confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE,
    }
)


class WorkerFenced(KafkaError):
    """Another worker with the same id took over: this one must stop."""


def client_configs(settings: WorkerSettings, bootstrap: str) -> tuple[Config, Config]:
    """(consumer, producer) settings: the defaults, then ``--kafka-config`` for both."""
    extra = dict(settings.kafka.config)
    consumer: Config = {
        "bootstrap.servers": bootstrap,
        **CONSUMER_DEFAULTS,
        "group.id": settings.group,
        **extra,
    }
    if settings.stable_id:
        consumer["group.instance.id"] = settings.worker_id
    producer: Config = {
        "bootstrap.servers": bootstrap,
        **PRODUCER_DEFAULTS,
        "transactional.id": settings.transactional_id,
        "transaction.timeout.ms": transaction_timeout_ms(settings.commit_interval),
        **extra,
    }
    return consumer, producer


def transaction_timeout_ms(commit_interval: float) -> int:
    """The producer's ``transaction.timeout.ms``: :data:`TRANSACTION_TIMEOUT_MS`, or ten
    commit intervals if that is longer."""
    return max(TRANSACTION_TIMEOUT_MS, round(commit_interval * 10_000))
