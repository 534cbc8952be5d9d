"""One frozen settings object, built by the CLI or the library API and passed down explicitly."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

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
DEFAULT_GAPS_TOPIC = "stream_gaps"
DEFAULT_REST_URL = "https://api.finazon.io/latest"
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


def _name(attribute: attrs.Attribute[Any]) -> str:
    return attribute.name.replace("_", " ")


def _at_least_one(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{_name(attribute)} must be at least 1, not {value}")


def _seconds(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{_name(attribute)} must be a number of seconds, 0 or more, not {value}")


def _positive_seconds(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{_name(attribute)} must be a positive number of seconds, not {value}")


def _retries(_inst: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{_name(attribute)} must be 0 or more, not {value}")


def _websocket_url(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.lower().startswith(("ws://", "wss://")):
        raise ValueError(
            f"{_name(attribute)} {value!r} is not a WebSocket URL (ws://... or wss://...)"
        )


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
    #: Where gap records go: what a disconnect missed and backfill could not fill.
    gaps_topic: str = DEFAULT_GAPS_TOPIC
    points: int = attrs.field(default=DEFAULT_POINTS, validator=_at_least_one)
    path: PathMode = "linear"
    volume_format: VolumeFormat = "descriptive"
    #: The ingest role: publish one frames record per bar here instead of its messages.
    frames_topic: str | None = None


@attrs.frozen
class KafkaSettings:
    """Where and how to produce. ``endpoint=None`` starts the embedded broker."""

    endpoint: str | None = None
    #: librdkafka settings passed through verbatim (``--kafka-config KEY=VALUE``).
    config: tuple[tuple[str, str], ...] = ()
    create_topics: bool = True
    partitions: int = attrs.field(default=1, validator=_at_least_one)
    replication_factor: int = attrs.field(default=1, validator=_at_least_one)
    flush_timeout: float = attrs.field(default=DEFAULT_FLUSH_TIMEOUT, validator=_seconds)
    #: How long to wait at start for a broker that does not answer yet.
    wait: float = attrs.field(default=60.0, validator=_seconds)
    #: Where live mode spools what Kafka cannot take yet (a directory per run inside), and
    #: where the failed-messages file goes by default. None: :func:`default_spool_dir`.
    spool_dir: Path | None = None
    #: Messages that finally fail delivery are appended here; None: ``failed-<run>.jsonl`` in
    #: the spool directory.
    failed_path: Path | None = None
    #: fsync spooled data (and the segment's directory entry) before it counts as spooled, so
    #: that the spool survives a machine crash, not only a crash of the process.
    spool_sync: bool = False

    @property
    def spool_root(self) -> Path:
        """``spool_dir``, or the default."""
        return self.spool_dir or default_spool_dir()


def default_spool_dir() -> Path:
    """``$XDG_STATE_HOME/finazon-trio`` (``~/.local/state/finazon-trio``): on disk (not a
    tmpfs, unlike many temporary directories), kept across reboots, the same wherever the tool
    is started from."""
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "finazon-trio"


def _check_speed(_inst: object, _attribute: object, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"replay speed must be a positive factor or 'max', not {value}")


@attrs.frozen
class LiveSettings:
    """How the live reader connects to Finazon. The key never appears in a repr or a log."""

    url: str = attrs.field(default=DEFAULT_URL, validator=_websocket_url)
    api_key: str = attrs.field(default="", repr=False)
    #: Seconds between application heartbeats (``{"event": "heartbeat"}``).
    heartbeat_interval: float = attrs.field(default=30.0, validator=_positive_seconds)
    #: Seconds between WebSocket pings, and how long a pong may take.
    ping_interval: float = attrs.field(default=30.0, validator=_positive_seconds)
    ping_timeout: float = attrs.field(default=10.0, validator=_positive_seconds)
    #: No message of any kind for this long means the connection is dead.
    stale_timeout: float = attrs.field(default=60.0, validator=_positive_seconds)
    #: Seconds the WebSocket handshake may take before the attempt counts as failed.
    connect_timeout: float = attrs.field(default=10.0, validator=_positive_seconds)
    max_backoff: float = attrs.field(default=30.0, validator=_positive_seconds)
    #: None retries forever.
    max_retries: int | None = attrs.field(default=None, validator=_retries)
    connections: int = attrs.field(default=1, validator=_at_least_one)


def _http_url(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.lower().startswith(("http://", "https://")):
        raise ValueError(f"{_name(attribute)} {value!r} is not an HTTP URL (http(s)://...)")


def _calls_per_minute(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{_name(attribute)} must be at least 1, not {value}")


@attrs.frozen
class BackfillSettings:
    """Filling what a disconnect missed from Finazon's REST API (README, "Gaps and backfill").

    Off unless asked for, so that a replay or a library run never calls REST by surprise: the
    ``live`` command and the library's live producer turn it on (``--no-backfill``: off); a
    replay follows its recording (:func:`~finazon_trio.recording.replay_settings`), whose REST
    answers it holds (no key, no network)."""

    enabled: bool = False
    #: The REST API's base URL; the path ``/{publisher}/{dataset}/time_series`` is appended.
    rest_url: str = attrs.field(default=DEFAULT_REST_URL, validator=_http_url)
    #: How long a symbol's live bars may wait for its backfill (budget, 429s and calls).
    timeout: float = attrs.field(default=5.0, validator=_positive_seconds)
    #: REST calls a minute at most (Finazon's plans allow from 5 up).
    calls_per_minute: int = attrs.field(default=5, validator=_calls_per_minute)


@attrs.frozen
class Settings:
    """Everything one run needs. Build it once; it never changes during the run."""

    subscription: Subscription = Subscription()
    output: Output = Output()
    kafka: KafkaSettings = KafkaSettings()
    live: LiveSettings = LiveSettings()
    backfill: BackfillSettings = BackfillSettings()
    #: Write the raw frames to this JSONL recording.
    record: Path | None = None
    #: None: on when stderr is a terminal.
    dashboard: bool | None = None
    #: Serve Prometheus metrics on this port (0 picks a free one).
    metrics_port: int | None = None
    #: Replay pacing: None runs flat out, otherwise a factor of the recorded pace.
    speed: float | None = attrs.field(default=None, validator=_check_speed)
