"""A Finazon-compatible WebSocket server for development and tests: ``finazon-trio serve``.

Clients connect to ``ws://HOST:PORT/<any path>?apikey=KEY``. Each gets its own subscription:
``subscribe`` / ``unsubscribe`` are acknowledged (``{"status": "success", "code":
"SUCCESS_SUBSCRIPTION", "data": {...}}``), each unknown ticker gets its own error (``{"status":
"error", "message": "Ticker XYZ is not supported"}``) while the others stay subscribed, and
``{"event": "heartbeat"}`` gets ``{"event": "heartbeat", "status": "success"}``. Finazon's limits
are enforced: an event over 100 KB or past 100 a minute gets an error and is ignored.

Known tickers: with a recording, the tickers that appear in its bar frames; without one, any
well-formed symbol (1-12 upper-case letters or digits, optionally followed by ``.``, ``/``, ``:``
or ``-`` and 1-12 more: ``AAPL``, ``BRK.B``, ``BTC/USDT``). ``unknown_tickers`` refuses more.
Known datasets: :data:`DATASETS` (Finazon's documented ones); a subscription to any other gets
``{"status": "error", "message": "Dataset xyz is not supported"}`` and subscribes nothing.

Bars come from :mod:`.server_feeds`: the recording's frames on one timeline shared by all clients
(scaled by ``speed``, optionally looped), or the seeded synthetic market (one update per
``frequency`` of simulated time, ``speed`` times faster than real time).

Faults, per connection and counted from its handshake: ``drop_every`` closes the TCP connection
without a closing handshake, always between two frames (every frame sent is whole and is
delivered before the FIN); ``stall_after`` goes silent without closing (no frames, no replies,
no pongs: the socket is no longer read); ``garbage_rate`` sends a malformed frame before that
fraction of the bar frames; ``reject_auth`` refuses every key. A :class:`ServerLog` passed to
:func:`serve` keeps every frame each client sent and was sent, for tests to compare.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import attrs
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from finazon_trio.server.feeds import Feed, garbage_frame, load_feed
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

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8765
#: Seconds a client may take to send its WebSocket handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds a normal close may take before the socket is simply closed.
CLOSE_TIMEOUT = 2.0
#: After a drop, seconds to wait for the client to close its side before closing ours (closing
#: while the client's bytes are unread would reset the connection and lose frames in flight).
DROP_LINGER = 5.0
#: Finazon's documented ceiling of client event messages per minute per connection.
EVENTS_PER_MINUTE = 100
#: Client messages trio-websocket buffers per connection.
MESSAGE_QUEUE = 16
UNAUTHORIZED_BODY = b'{"status":"error","message":"Unauthorized: invalid API key"}'
#: The datasets a subscription may name: Finazon's stock and crypto datasets.
DATASETS = ("us_stocks_essential", "sip_non_pro", "sip_pro", "binance", "coinbase")

FrameStyle = Literal["flat", "wrapped", "legacy"]
AuthStyle = Literal["reject", "message", "close"]
Outcome = Literal["closed", "drop", "stall"]
#: Tickers to add to (True) or remove from (False) a client's subscription.
_Change = tuple[list[str], bool]


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

    def sent(self) -> list[str]:
        """Every frame sent to any client, connection after connection."""
        return [text for client in self.clients for text in client.sent]


async def serve(
    config: ServerConfig,
    log: ServerLog | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled: ``port = await nursery.start(serve, config, log)``.

    ``task_status.started`` gets the real port (``port=0`` picks a free one). With ``log``,
    every client's frames are kept there (tests); without, nothing is kept.
    """
    feed = await load_feed(config)
    listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    port: int = listeners[0].socket.getsockname()[1]
    server = _Server(config, feed, log if log is not None else ServerLog(), keep=log is not None)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server.handle, listeners)
        logger.info(
            "Finazon-compatible server on ws://%s:%d/v1 (%s)", config.host, port, feed.describe()
        )
        task_status.started(port)


class _Server:
    def __init__(self, config: ServerConfig, feed: Feed, log: ServerLog, *, keep: bool) -> None:
        self.config = config
        self.feed = feed
        self.log = log
        self.keep = keep
        self.numbers = itertools.count(1)

    async def handle(self, stream: trio.SocketStream) -> None:
        """One client, from handshake to close. Errors end this client, never the server."""
        record = ClientLog(next(self.numbers))
        if self.keep:
            self.log.clients.append(record)
        try:
            await self._handle(stream, record)
        except Exception:
            logger.exception("client %d: unexpected error", record.number)
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await stream.aclose()

    async def _handle(self, stream: trio.SocketStream, record: ClientLog) -> None:
        async with trio.open_nursery() as nursery:
            reader_done = trio.Event()
            started = None
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                started = await nursery.start(_run_websocket, stream, reader_done)
            if started is None:
                return
            request, reader = started
            if not self._authorized(request) and self.config.auth_failure == "reject":
                record.ended = "rejected"
                logger.info("client %d: API key refused (HTTP 401)", record.number)
                headers = [(b"content-type", b"application/json")]
                await request.reject(401, extra_headers=headers, body=UNAUTHORIZED_BODY)
                reader.cancel()
                return
            ws = await request.accept()
            session = _Session(self, record, ws)
            record.opened = session.opened
            if not self._authorized(request):
                record.ended = "rejected"
                if self.config.auth_failure == "message":
                    await session.send(UNAUTHORIZED_BODY.decode())
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await ws.aclose(1008, "Unauthorized: invalid API key")
                reader.cancel()
                return
            logger.info("client %d connected from %s", record.number, ws.remote)
            outcome = await session.run()
            record.ended = outcome
            logger.info("client %d: %s", record.number, outcome)
            if outcome == "closed":
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await ws.aclose()
                reader.cancel()
                return
            # A fault: stop trio-websocket's reader (no more pongs) and own the raw socket.
            reader.cancel()
            await reader_done.wait()
            await self._fault(stream, outcome, session.opened)

    async def _fault(self, stream: trio.SocketStream, outcome: Outcome, opened: float) -> None:
        """A stall stays silent until the client leaves or a drop is due; a drop closes
        without a closing handshake."""
        if outcome == "stall":
            every = self.config.drop_every
            with trio.move_on_at(math.inf if every is None else opened + every):
                await _discard_until_eof(stream)
                return
        await _drop(stream)

    def _authorized(self, request: WebSocketRequest) -> bool:
        keys = parse_qs(urlsplit(request.path).query).get("apikey", [])
        key = keys[0] if keys else ""
        if self.config.reject_auth or not key:
            return False
        return not self.config.api_keys or key in self.config.api_keys


async def _run_websocket(
    stream: trio.SocketStream,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[tuple[WebSocketRequest, trio.CancelScope]],
) -> None:
    """Run trio-websocket's reader for ``stream`` in a nursery of its own, so that a fault can
    stop it (no more pongs, no more reads) without closing the socket."""
    try:
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, stream, message_queue_size=MESSAGE_QUEUE)
            task_status.started((request, nursery.cancel_scope))
    finally:
        done.set()


async def _drop(stream: trio.SocketStream) -> None:
    """Close abruptly (no WebSocket close frame) but let every byte already sent arrive."""
    try:
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    with trio.move_on_after(DROP_LINGER):
        await _discard_until_eof(stream)


async def _discard_until_eof(stream: trio.SocketStream) -> None:
    try:
        while await stream.receive_some(65536):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


class _Session:
    """One accepted client: its subscription, its replies, its feed and its faults."""

    def __init__(self, server: _Server, record: ClientLog, ws: WebSocketConnection) -> None:
        config = server.config
        self.server = server
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
            nursery.start_soon(self.server.feed.stream, self)
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
            if self.server.keep:
                self.record.sent.append(text)

    async def send_bar(self, text: str) -> None:
        """Send a bar frame, preceded by a malformed one ``garbage_rate`` of the time."""
        rate = self.server.config.garbage_rate
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
        config = self.server.config
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
            if self.server.keep:
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
        problem = self.server.feed.check(params)
        if params["dataset"] not in self.server.config.datasets:
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
        return ticker not in self.server.config.unknown_tickers and self.server.feed.knows(ticker)
