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


def _fraction(_inst: object, _attribute: object, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"garbage_rate must be between 0 and 1, not {value}")


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
