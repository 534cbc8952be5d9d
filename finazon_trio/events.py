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


@attrs.frozen(slots=True)
class HttpExchange:
    """One REST call of a backfill: the request (never the key) and what came back."""

    #: When the request was sent (ns since the epoch).
    t_ns: int
    path: str
    params: dict[str, str]
    #: The HTTP status; 0 when no response came (``error`` says why).
    status: int = 0
    body: str = ""
    #: ``timeout``, or ``network: ...`` when the call failed without a response.
    error: str = ""


@attrs.frozen(slots=True)
class RestResult:
    """How one backfill's REST calls went (``rest`` in a recording): made by the live REST
    client, replayed from a recording, judged by the transform (:mod:`.transform.backfill`)."""

    #: When the backfill ended (ns since the epoch).
    t_ns: int
    #: The backfill's number in this run (from 1), as the transform numbered it.
    backfill: int
    symbol: str
    exchanges: tuple[HttpExchange, ...] = ()
    #: Why the calls stopped short of an answer: ``timeout`` (``--backfill-timeout``),
    #: ``rate_limited`` (the budget or 429s outlasted it), or "" (the last exchange says).
    error: str = ""


SourceEvent: TypeAlias = Received | Sent | Lifecycle | RestResult


@attrs.frozen(slots=True)
class BackfillRequest:
    """What the transform asks the REST client for: ``symbol``'s 1-minute bars opening from
    ``first`` to ``last`` (Unix seconds, both included)."""

    backfill: int
    symbol: str
    first: int
    last: int


@attrs.frozen(slots=True)
class Outgoing:
    """The Kafka records made from one received frame, in the order they must be produced."""

    #: When the frame was received (for receipt-to-acknowledgement latency).
    t_ns: int
    messages: list[Message]
