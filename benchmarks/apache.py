"""Apache Kafka for the benchmark: ``scripts/apache_kafka.py``'s broker, and its version."""

from __future__ import annotations

import re
from pathlib import Path

from scripts.apache_kafka import ApacheKafka

__all__ = ["ApacheKafka", "kafka_version"]

ROOT = Path(__file__).resolve().parent.parent


def kafka_version() -> str:
    """The Apache Kafka version the script fetches (from ``kafka/pom.xml``)."""
    match = re.search(r"<kafka.version>([^<]+)<", (ROOT / "kafka" / "pom.xml").read_text())
    return match[1] if match else "?"
