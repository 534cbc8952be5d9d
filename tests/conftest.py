"""Real Kafka brokers for the tests.

``kafka_bootstrap`` runs each test against Apache Kafka 4 (KRaft, jars fetched by
``scripts/apache_kafka.py``) and against the embedded broker (Tansu), each started once per
session; with ``KAFKA_TEST_BOOTSTRAP=host:port`` it runs them once, against that cluster.
``apache_kafka`` is a broker of the test's own, to kill and restart.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from finazon_trio.sink.broker import EmbeddedBroker

from .helpers.kafka import BROKERS, EXTERNAL, ApacheKafka


@pytest.fixture(scope="session", params=BROKERS)
def kafka_bootstrap(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``host:port`` of a running broker, shared by the whole session (one per parameter)."""
    if request.param == "external":
        assert EXTERNAL is not None
        yield EXTERNAL
    elif request.param == "apache":
        with ApacheKafka(tmp_path_factory.mktemp("kafka")) as kafka:
            yield kafka.bootstrap
    else:
        with EmbeddedBroker() as broker:
            yield broker.bootstrap


@pytest.fixture(autouse=True)
def _own_state_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test's default spool directory is its own (child processes inherit it), never the
    user's ``~/.local/state``."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def apache_kafka(tmp_path: Path) -> Iterator[ApacheKafka]:
    """A running Apache Kafka broker of this test's own: ``kill()``, ``stop()``, ``start()`` and
    ``restart()`` it at will (same port, same data); it is stopped at the end."""
    kafka = ApacheKafka(tmp_path / "kafka")
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture
def kafka_kind(request: pytest.FixtureRequest, kafka_bootstrap: str) -> str:
    """Which broker ``kafka_bootstrap`` is: ``apache``, ``embedded`` or ``external``."""
    kind: str = request.node.callspec.params["kafka_bootstrap"]
    return kind
