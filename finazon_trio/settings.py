"""One frozen settings object, built by the CLI or the library API and passed down explicitly."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

import attrs

DEFAULT_URL = "wss://ws.finazon.io/v1"
DEFAULT_DATASET = "us_stocks_essential"
DEFAULT_CHANNEL = "bars"
DEFAULT_FREQUENCY = "1s"
DEFAULT_AGGREGATION = "1m"
DEFAULT_PROVIDER = "finazon"
DEFAULT_POINTS = 90
DEFAULT_PRICE_TICKS_TOPIC = "price_ticks"
DEFAULT_VOLUME_STREAM_TOPIC = "volume_stream"
#: How long shutdown waits for Kafka to acknowledge what is queued.
DEFAULT_FLUSH_TIMEOUT = 30.0

PathMode = Literal["linear", "extremes"]
VolumeFormat = Literal["descriptive", "raw"]

_INTERVAL = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def interval_ms(text: str) -> int | None:
    """Milliseconds of a Finazon interval such as ``1s``, ``10s`` or ``1m``; None if unknown."""
    match = _INTERVAL.match(text)
    if match is None or int(match[1]) == 0:
        return None
    return int(match[1]) * _UNIT_MS[match[2]]


def _check_interval(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if interval_ms(value) is None:
        raise ValueError(f"{attribute.name} {value!r} is not an interval such as 1s, 10s or 1m")


@attrs.frozen
class Subscription:
    """What the client subscribes to; frames that omit a field fall back to these values."""

    dataset: str = DEFAULT_DATASET
    tickers: tuple[str, ...] = ()
    channel: str = DEFAULT_CHANNEL
    frequency: str = attrs.field(default=DEFAULT_FREQUENCY, validator=_check_interval)
    aggregation: str = DEFAULT_AGGREGATION
    provider: str = DEFAULT_PROVIDER

    @property
    def frequency_ms(self) -> int:
        """The update interval ``W`` in milliseconds."""
        ms = interval_ms(self.frequency)
        assert ms is not None  # checked by the validator
        return ms


@attrs.frozen
class Output:
    """What is published, and how: the output contract's knobs."""

    price_ticks_topic: str = DEFAULT_PRICE_TICKS_TOPIC
    volume_stream_topic: str = DEFAULT_VOLUME_STREAM_TOPIC
    dead_letter_topic: str | None = None
    points: int = attrs.field(default=DEFAULT_POINTS, validator=attrs.validators.ge(1))
    path: PathMode = "linear"
    volume_format: VolumeFormat = "descriptive"


@attrs.frozen
class KafkaSettings:
    """Where and how to produce. ``endpoint=None`` starts the embedded broker."""

    endpoint: str | None = None
    #: librdkafka settings passed through verbatim (``--kafka-config KEY=VALUE``).
    config: tuple[tuple[str, str], ...] = ()
    create_topics: bool = True
    partitions: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    replication_factor: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    flush_timeout: float = DEFAULT_FLUSH_TIMEOUT
    #: How long to wait at start for a broker that does not answer yet.
    wait: float = 60.0


def _check_speed(_inst: object, _attribute: object, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"replay speed must be a positive factor or 'max', not {value}")


@attrs.frozen
class LiveSettings:
    """How the live reader connects to Finazon. The key never appears in a repr or a log."""

    url: str = DEFAULT_URL
    api_key: str = attrs.field(default="", repr=False)
    #: Seconds between application heartbeats (``{"event": "heartbeat"}``).
    heartbeat_interval: float = 30.0
    #: Seconds between WebSocket pings, and how long a pong may take.
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    #: No message of any kind for this long means the connection is dead.
    stale_timeout: float = 60.0
    #: Seconds the WebSocket handshake may take before the attempt counts as failed.
    connect_timeout: float = 10.0
    max_backoff: float = 30.0
    #: None retries forever.
    max_retries: int | None = None
    connections: int = attrs.field(default=1, validator=attrs.validators.ge(1))


@attrs.frozen
class Settings:
    """Everything one run needs. Build it once; it never changes during the run."""

    subscription: Subscription = Subscription()
    output: Output = Output()
    kafka: KafkaSettings = KafkaSettings()
    live: LiveSettings = LiveSettings()
    #: Write the raw frames to this JSONL recording.
    record: Path | None = None
    #: None: on when stderr is a terminal.
    dashboard: bool | None = None
    #: Serve Prometheus metrics on this port (0 picks a free one).
    metrics_port: int | None = None
    #: Replay pacing: None runs flat out, otherwise a factor of the recorded pace.
    speed: float | None = attrs.field(default=None, validator=_check_speed)
