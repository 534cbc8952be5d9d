"""The worker's client settings (pure)."""

from __future__ import annotations

from finazon_trio.settings import KafkaSettings
from finazon_trio.worker.clients import TRANSACTION_TIMEOUT_MS, client_configs
from finazon_trio.worker.config import WorkerSettings


def _producer(
    commit_interval: float = 0.1, kafka: KafkaSettings | None = None, worker_id: str = "w"
) -> dict[str, object]:
    settings = WorkerSettings(
        frames_topic="f",
        kafka=kafka or KafkaSettings(),
        worker_id=worker_id,
        commit_interval=commit_interval,
    )
    return dict(client_configs(settings, "b:1")[1])


def test_an_open_transaction_outlives_ten_commit_intervals_and_no_less_than_the_default() -> None:
    assert _producer()["transaction.timeout.ms"] == TRANSACTION_TIMEOUT_MS
    assert _producer(commit_interval=0.5)["transaction.timeout.ms"] == TRANSACTION_TIMEOUT_MS
    assert _producer(commit_interval=3)["transaction.timeout.ms"] == 30_000


def test_kafka_config_overrides_the_transaction_timeout() -> None:
    kafka = KafkaSettings(config=(("transaction.timeout.ms", "120000"),))
    assert _producer(kafka=kafka)["transaction.timeout.ms"] == "120000"
    assert _producer(worker_id="w1")["transactional.id"] == "finazon-trio-expand-w1"
