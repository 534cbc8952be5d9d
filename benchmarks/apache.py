"""``scripts/apache_kafka.py`` (not a package: loaded from its path), and the Kafka version."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: A single-node KRaft broker on free loopback ports: ``with ApacheKafka(data_dir) as kafka``.
ApacheKafka = _load_script("apache_kafka").ApacheKafka


def kafka_version() -> str:
    """The Apache Kafka version the script fetches (from ``kafka/pom.xml``)."""
    match = re.search(r"<kafka.version>([^<]+)<", (ROOT / "kafka" / "pom.xml").read_text())
    return match[1] if match else "?"
