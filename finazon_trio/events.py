"""What flows between the pipeline's stages.

source ──SourceEvent──▶ [recorder] ──SourceEvent──▶ transform ──Outgoing──▶ publisher

Every source (live reader, replay) emits the same events, so everything after it is identical
in live mode and in replay.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import attrs

Headers: TypeAlias = list[tuple[str, bytes]]
#: One Kafka record: (topic, key, value, timestamp in epoch ms, headers or None).
Message: TypeAlias = tuple[str, bytes, bytes, int, Headers | None]


@attrs.frozen(slots=True)
class Received:
    """A WebSocket text frame received from the server (``dir: "in"`` in a recording)."""

    t_ns: int
    conn: int
    text: str


@attrs.frozen(slots=True)
class Sent:
    """A WebSocket text frame sent to the server (``dir: "out"``)."""

    t_ns: int
    conn: int
    text: str


@attrs.frozen(slots=True)
class Lifecycle:
    """A connection opened or closed, with the reason (key already redacted)."""

    t_ns: int
    conn: int
    event: Literal["connected", "disconnected"]
    reason: str = ""


SourceEvent: TypeAlias = Received | Sent | Lifecycle


@attrs.frozen(slots=True)
class Outgoing:
    """The Kafka records made from one received frame, in the order they must be produced."""

    #: When the frame was received (for receipt-to-acknowledgement latency).
    t_ns: int
    messages: list[Message]
