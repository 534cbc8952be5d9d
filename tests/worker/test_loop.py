"""The worker's loop against a Kafka that does not answer (a real client, no broker)."""

from __future__ import annotations

import socket
import threading

import pytest

from finazon_trio.errors import KafkaError
from finazon_trio.worker import consumer
from finazon_trio.worker.config import WorkerSettings
from finazon_trio.worker.consumer import ExpandLoop
from finazon_trio.worker.metrics import WorkerMetrics, WorkerState


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_stop_while_kafka_has_not_answered_init_transactions_ends_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kafka vanished after the worker found it: ``init_transactions`` times out (retriable),
    and a stop asked meanwhile ends the loop with one error instead of retrying for ever."""
    monkeypatch.setattr(consumer, "TXN_TIMEOUT", 0.5)
    metrics = WorkerMetrics()
    loop = ExpandLoop(
        WorkerSettings(frames_topic="frames", worker_id="w"),
        f"127.0.0.1:{_closed_port()}",
        metrics,
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run()
        except KafkaError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    loop.stop.set()
    thread.join(30)

    assert not thread.is_alive(), "the loop kept retrying init_transactions after the stop"
    (error,) = errors
    assert "stopped before Kafka answered" in str(error)
    assert metrics.state is WorkerState.STOPPED
