"""How ``finazon-trio serve`` behaves: :class:`ServerConfig` and its defaults."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import attrs

DEFAULT_PORT = 8765
#: The datasets a subscription may name: Finazon's stock and crypto datasets.
DATASETS = ("us_stocks_essential", "sip_non_pro", "sip_pro", "binance", "coinbase")

FrameStyle = Literal["flat", "wrapped", "legacy"]
AuthStyle = Literal["reject", "message", "close"]


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, not {value}")


def _fraction(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, not {value}")


def _calls(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be at least 1 a minute, not {value}")


def _delay(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a number of seconds, 0 or more, not {value}")


@attrs.frozen
class ServerConfig:
    """How ``finazon-trio serve`` behaves. ``api_keys`` empty: any non-empty key is accepted."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: Stream this recording's frames; None: the synthetic market.
    recording: Path | None = None
    api_keys: tuple[str, ...] = ()
    #: Time-lapse factor: of the recording's pace, or of simulated time (synthetic).
    speed: float = attrs.field(default=1.0, validator=_positive)
    #: Start the recording again at its end (bar times shifted so that they keep increasing).
    loop: bool = False
    seed: int = 0
    drop_every: float | None = attrs.field(default=None, validator=_positive)
    stall_after: float | None = attrs.field(default=None, validator=_positive)
    garbage_rate: float = attrs.field(default=0.0, validator=_fraction)
    reject_auth: bool = False
    #: Tickers refused even though well-formed (or present in the recording).
    unknown_tickers: tuple[str, ...] = ()
    #: Synthetic bars as flat frames, ``{"ch": "bars", "data": [...]}``, or the older flat
    #: shape (no ``d``, ``aggr`` with a stray space). Recordings keep their recorded shape.
    frame_style: FrameStyle = "flat"
    #: Refuse a bad key with HTTP 401 at the handshake; or accept, then send an error and close
    #: (``message``), or close with 1008 and the reason "Unauthorized: invalid API key"
    #: (``close``).
    auth_failure: AuthStyle = "reject"
    #: Unix second the synthetic clock shows at start; None: now.
    start_time: float | None = None
    #: Datasets a subscription may name; any other is refused.
    datasets: tuple[str, ...] = DATASETS
    #: After each drop (``drop_every``), refuse the dropped key's handshakes (HTTP 503) for
    #: this many seconds of market time (real seconds times ``speed``): the market runs on and
    #: the client misses them.
    drop_for: float | None = attrs.field(default=None, validator=_positive)
    #: Serve the REST time-series endpoint on this port (0: a free one); None: no REST.
    rest_port: int | None = None
    #: REST faults: calls a minute per key before 429; fraction of calls answered 503; seconds
    #: before each answer; fraction of 200 answers with a malformed body.
    rest_rate_limit: int | None = attrs.field(default=None, validator=_calls)
    rest_failure_rate: float = attrs.field(default=0.0, validator=_fraction)
    rest_delay: float = attrs.field(default=0.0, validator=_delay)
    rest_garbage_rate: float = attrs.field(default=0.0, validator=_fraction)
    #: Refuse every REST call (401 ``INVALID_API_KEY``): a key or plan without REST access.
    rest_reject_auth: bool = False
