"""A recording's header and events of every kind, with awkward text, and the API key that must
never reach a recording."""

from __future__ import annotations

from finazon_trio.events import Lifecycle, Received, Sent, SourceEvent
from finazon_trio.recording import RecordingHeader

KEY = "fz_3b9Xq7LkP0secretKEY"
HEADER = RecordingHeader(
    created_ns=1_731_079_829_200_000_000,
    url="wss://ws.finazon.io/v1",
    dataset="binance",
    tickers=("BTC/USDT", "ETH/USDT"),
    frequency="10s",
)
EVENTS: list[SourceEvent] = [
    Lifecycle(1_000, 1, "connected"),
    Sent(1_001, 1, '{"event":"subscribe","tickers":["BTC/USDT"]}'),
    Received(1_002, 1, 'quotes " and \\ backslash, ünïcødé 📈, \u2028 separator, a\nnewline\ttab'),
    Received(1_003, 1, ""),
    Lifecycle(1_004, 1, "disconnected", "ping timeout (10 s) — reconnecting"),
    Received(1_005, 2, '{"s":"BTC/USDT","c":76000.5}'),
]
