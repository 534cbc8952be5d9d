"""Fixtures of the sink tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def strict_bootstrap(kafka_kind: str, kafka_bootstrap: str) -> str:
    """A broker that refuses what Kafka refuses, unlike the embedded one (an external cluster
    must not create topics on first use either)."""
    if kafka_kind == "embedded":
        pytest.skip("Tansu creates topics on first use and accepts any replication factor")
    return kafka_bootstrap
