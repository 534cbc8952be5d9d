"""``finazon-trio broker``: the embedded broker on its own, for other consumers to attach to."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from confluent_kafka import Consumer, TopicPartition

from ..helpers.kafka import free_port, produce_all, unique_topic


def test_broker_command_serves_until_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "finazon_trio", "broker", "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "listening on" in line:
                break
        assert f"127.0.0.1:{port}" in "".join(lines), lines
        bootstrap = f"127.0.0.1:{port}"
        topic = unique_topic("attach")
        produce_all(bootstrap, [(topic, b"AAPL", b'{"x": 1}', 1_700_000_000_000, None)])
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic})
        consumer.assign([TopicPartition(topic, 0, 0)])
        message = consumer.poll(30)
        consumer.close()
        assert message is not None
        assert message.value() == b'{"x": 1}'
        assert message.timestamp()[1] == 1_700_000_000_000
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
