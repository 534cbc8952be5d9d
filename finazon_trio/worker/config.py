"""A worker's settings: one frozen object built by the CLI, passed down explicitly."""

from __future__ import annotations

import os
import socket
from typing import Final

import attrs

from finazon_trio.settings import KafkaSettings, Output

DEFAULT_GROUP: Final = "finazon-trio-expand"
#: Seconds between transaction commits: the latency a read_committed consumer adds to the
#: output, against the fixed cost of a commit (two round trips to the transaction coordinator).
DEFAULT_COMMIT_INTERVAL: Final = 0.1
#: Partitions the ingest role gives the frames topic when it creates it: the most workers a
#: group can keep busy (README, "Scaling out").
DEFAULT_FRAMES_PARTITIONS: Final = 12


def default_worker_id() -> str:
    """Unique per process (``host-pid``): fine for workers that come and go; give a stable
    ``--worker-id`` for static membership and fencing of a restarted worker's predecessor."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name.replace('_', ' ')} must be positive, not {value}")


@attrs.frozen
class WorkerSettings:
    """Everything one worker needs. ``stable_id``: the worker id was given (``--worker-id``),
    so the worker joins as a static member and its ``transactional.id`` fences a predecessor."""

    frames_topic: str
    output: Output = attrs.field(factory=Output)
    kafka: KafkaSettings = attrs.field(factory=KafkaSettings)
    group: str = DEFAULT_GROUP
    worker_id: str = attrs.field(factory=default_worker_id)
    stable_id: bool = False
    commit_interval: float = attrs.field(default=DEFAULT_COMMIT_INTERVAL, validator=_positive)
    dashboard: bool = False
    metrics_port: int | None = None

    @property
    def transactional_id(self) -> str:
        return f"{self.group}-{self.worker_id}"
