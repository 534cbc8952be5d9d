"""One client of ``finazon-trio serve``: its subscription, replies, feed and faults."""

from __future__ import annotations

import random
from typing import Literal

import attrs
import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from finazon_trio.server.config import ServerConfig
from finazon_trio.server.feeds import Feed, garbage_frame
from finazon_trio.settings import (
    DEFAULT_AGGREGATION,
    DEFAULT_CHANNEL,
    DEFAULT_DATASET,
    DEFAULT_FREQUENCY,
)
from finazon_trio.source.backoff import RateLimiter
from finazon_trio.source.protocol import (
    MAX_EVENT_BYTES,
    error_message,
    heartbeat_reply,
    requested_tickers,
    success_message,
)

#: Finazon's documented ceiling of client event messages per minute per connection.
EVENTS_PER_MINUTE = 100

Outcome = Literal["closed", "drop", "stall"]
#: Tickers to add to (True) or remove from (False) a client's subscription.
_Change = tuple[list[str], bool]


@attrs.define
class ClientLog:
    """What one client connection saw: its number (from 1), frames each way, how it ended."""

    number: int
    #: trio time of the handshake.
    opened: float = 0.0
    sent: list[str] = attrs.field(factory=list)
    received: list[str] = attrs.field(factory=list)
    #: trio time at which each of ``received`` arrived.
    received_at: list[float] = attrs.field(factory=list)
    #: "", then "rejected", "closed" (client or error), "drop" or "stall".
    ended: str = ""


@attrs.define
class ServerLog:
    """Every client of one server, in connection order (tests read it)."""

    clients: list[ClientLog] = attrs.field(factory=list)
    #: The REST endpoint's port (``rest_port``), once it listens; its answers by HTTP status.
    rest_port: int | None = None
    rest: dict[int, int] = attrs.field(factory=dict)

    def sent(self) -> list[str]:
        """Every frame sent to any client, connection after connection."""
        return [text for client in self.clients for text in client.sent]


class Session:
    """One accepted client: its subscription, its replies, its feed and its faults."""

    def __init__(
        self,
        config: ServerConfig,
        feed: Feed,
        record: ClientLog,
        ws: WebSocketConnection,
        *,
        keep: bool,
    ) -> None:
        self.config = config
        self.feed = feed
        self.keep = keep
        self.record = record
        self.ws = ws
        self.opened = trio.current_time()
        self.tickers: dict[str, None] = {}  # an ordered set
        self.dataset = DEFAULT_DATASET
        self.frequency = DEFAULT_FREQUENCY
        self.aggregation = DEFAULT_AGGREGATION
        self.changed = trio.Event()
        self.rng = random.Random(f"finazon-trio-server:{config.seed}:{record.number}")
        self._lock = trio.Lock()
        self._muted = False
        self._limiter = RateLimiter(EVENTS_PER_MINUTE, 60.0)
        self._outcome: Outcome = "closed"
        self._scope = trio.CancelScope()

    async def run(self) -> Outcome:
        """Serve until the client goes or a fault strikes; return which."""
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            nursery.start_soon(self._receive)
            nursery.start_soon(self.feed.stream, self)
            nursery.start_soon(self._faults)
        return self._outcome

    async def send(self, text: str) -> None:
        """Send one frame whole, unless a fault silenced this client."""
        async with self._lock:
            if self._muted:
                return
            try:
                await self.ws.send_message(text)
            except ConnectionClosed:
                self._scope.cancel()
                return
            if self.keep:
                self.record.sent.append(text)

    async def send_bar(self, text: str) -> None:
        """Send a bar frame, preceded by a malformed one ``garbage_rate`` of the time."""
        rate = self.config.garbage_rate
        if rate and self.rng.random() < rate:
            await self.send(garbage_frame(self.rng, text))
        await self.send(text)

    def update(self, tickers: list[str], add: bool) -> None:
        for ticker in tickers:
            if add:
                self.tickers[ticker] = None
            else:
                self.tickers.pop(ticker, None)
        self.changed.set()
        self.changed = trio.Event()

    async def _faults(self) -> None:
        config = self.config
        due: list[tuple[float, Outcome]] = []
        if config.drop_every is not None:
            due.append((config.drop_every, "drop"))
        if config.stall_after is not None:
            due.append((config.stall_after, "stall"))
        if not due:
            return
        after, outcome = min(due)
        await trio.sleep_until(self.opened + after)
        async with self._lock:  # never in the middle of a frame
            self._muted = True
        self._outcome = outcome
        self._scope.cancel()

    async def _receive(self) -> None:
        while True:
            try:
                text = await self.ws.get_message()
            except ConnectionClosed:
                self._scope.cancel()
                return
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            if self.keep:
                self.record.received.append(text)
                self.record.received_at.append(trio.current_time())
            replies, change = self._answer(text)
            for reply in replies:
                await self.send(reply)
            if change is not None:  # after the acknowledgement, as Finazon does
                self.update(*change)

    def _answer(self, text: str) -> tuple[list[str], _Change | None]:
        """The replies to a client event, and the change to the subscription it asks for."""
        now = trio.current_time()
        if self._limiter.next_allowed(now) > now:
            return [error_message(f"Too many requests: over {EVENTS_PER_MINUTE} a minute")], None
        self._limiter.record(now)
        if len(text.encode()) > MAX_EVENT_BYTES:
            return [error_message(f"Message too large: over {MAX_EVENT_BYTES} bytes")], None
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            return [error_message("Invalid message: not JSON")], None
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            return [error_message("Invalid message: no event")], None
        request_id = event.get("request_id")
        name = event["event"]
        if name == "heartbeat":
            return [heartbeat_reply(request_id)], None
        if name in ("subscribe", "unsubscribe"):
            return self._subscription(event, request_id, add=name == "subscribe")
        return [error_message(f"Unknown event: {name[:50]}", request_id)], None

    def _subscription(
        self, event: dict[str, object], request_id: object, *, add: bool
    ) -> tuple[list[str], _Change | None]:
        tickers = requested_tickers(event.get("tickers"))
        channel = event.get("channel", DEFAULT_CHANNEL)
        if tickers is None:
            return [error_message("Invalid message: tickers must be a list", request_id)], None
        if channel != DEFAULT_CHANNEL:
            unsupported = f"Channel {str(channel)[:50]} is not supported"
            return [error_message(unsupported, request_id)], None
        params = {
            "dataset": str(event.get("dataset", self.dataset)),
            "frequency": str(event.get("frequency", self.frequency)),
            "aggregation": str(event.get("aggregation", self.aggregation)),
        }
        problem = self.feed.check(params)
        if params["dataset"] not in self.config.datasets:
            problem = f"Dataset {params['dataset'][:50]} is not supported"
        if problem:
            return [error_message(problem, request_id)], None
        replies, accepted = [], []
        for ticker in dict.fromkeys(tickers):
            if not add:
                if ticker in self.tickers:
                    accepted.append(ticker)
            elif self._known(ticker):
                accepted.append(ticker)
            else:
                replies.append(error_message(f"Ticker {ticker[:50]} is not supported", request_id))
        if add:
            self.dataset, self.frequency = params["dataset"], params["frequency"]
            self.aggregation = params["aggregation"]
        if accepted or not replies:
            code = "SUCCESS_SUBSCRIPTION" if add else "SUCCESS_UNSUBSCRIPTION"
            data = {**params, "tickers": accepted, "channel": DEFAULT_CHANNEL}
            replies.append(success_message(code, data, request_id))
        return replies, (accepted, add)

    def _known(self, ticker: str) -> bool:
        return ticker not in self.config.unknown_tickers and self.feed.knows(ticker)
