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
Known datasets: :data:`.config.DATASETS` (Finazon's documented ones); a subscription to any other
gets ``{"status": "error", "message": "Dataset xyz is not supported"}`` and subscribes nothing.

Bars come from :mod:`.feeds`: the recording's frames on one timeline shared by all clients
(scaled by ``speed``, optionally looped), or the seeded synthetic market (one update per
``frequency`` of simulated time, ``speed`` times faster than real time).

Faults, per connection and counted from its handshake: ``drop_every`` closes the TCP connection
without a closing handshake, always between two frames (every frame sent is whole and is
delivered before the FIN); ``stall_after`` goes silent without closing (no frames, no replies,
no pongs: the socket is no longer read); ``garbage_rate`` sends a malformed frame before that
fraction of the bar frames; ``reject_auth`` refuses every key; ``drop_for`` refuses a dropped
key's handshakes (HTTP 503) for that much market time after each drop, while the market runs on,
so that the client misses whole minutes. A :class:`ServerLog` passed to :func:`serve` keeps
every frame each client sent and was sent, for tests to compare.

With ``rest_port``, the REST time-series endpoint (:mod:`.rest`) answers beside it, over the same
market; its port goes to ``ServerLog.rest_port``.
"""

from __future__ import annotations

import itertools
import logging
import math
from urllib.parse import parse_qs, urlsplit

import trio
from trio_websocket import (
    WebSocketRequest,
    wrap_server_stream,
)

from finazon_trio.server.config import ServerConfig
from finazon_trio.server.feeds import Feed, load_feed
from finazon_trio.server.rest import RestServer, serve_rest
from finazon_trio.server.session import ClientLog, Outcome, ServerLog, Session

logger = logging.getLogger(__name__)

#: Seconds a client may take to send its WebSocket handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds a normal close may take before the socket is simply closed.
CLOSE_TIMEOUT = 2.0
#: After a drop, seconds to wait for the client to close its side before closing ours (closing
#: while the client's bytes are unread would reset the connection and lose frames in flight).
DROP_LINGER = 5.0
#: Client messages trio-websocket buffers per connection.
MESSAGE_QUEUE = 16
UNAUTHORIZED_BODY = b'{"status":"error","message":"Unauthorized: invalid API key"}'
UNAVAILABLE_BODY = b'{"status":"error","message":"Service unavailable: try again later"}'


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
    keep = log is not None
    log = log if log is not None else ServerLog()
    server = _Server(config, feed, log, keep=keep)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server.handle, listeners)
        logger.info(
            "Finazon-compatible server on ws://%s:%d/v1 (%s)", config.host, port, feed.describe()
        )
        if config.rest_port is not None:
            rest = RestServer(config, feed)
            log.rest = rest.statuses
            log.rest_port = await nursery.start(serve_rest, config, rest, config.rest_port)
        task_status.started(port)


class _Server:
    def __init__(self, config: ServerConfig, feed: Feed, log: ServerLog, *, keep: bool) -> None:
        self.config = config
        self.feed = feed
        self.log = log
        self.keep = keep
        self.numbers = itertools.count(1)
        #: Keys dropped by a fault, refused until this trio time (``drop_for``).
        self.away_until: dict[str, float] = {}

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
            key = _key(request)
            if trio.current_time() < self.away_until.get(key, -math.inf):
                record.ended = "rejected"
                headers = [(b"content-type", b"application/json")]
                await request.reject(503, extra_headers=headers, body=UNAVAILABLE_BODY)
                reader.cancel()
                return
            if not self._authorized(request) and self.config.auth_failure == "reject":
                record.ended = "rejected"
                logger.info("client %d: API key refused (HTTP 401)", record.number)
                headers = [(b"content-type", b"application/json")]
                await request.reject(401, extra_headers=headers, body=UNAUTHORIZED_BODY)
                reader.cancel()
                return
            ws = await request.accept()
            session = Session(self.config, self.feed, record, ws, keep=self.keep)
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
            if outcome == "drop" and self.config.drop_for is not None:
                away = self.config.drop_for / self.config.speed
                self.away_until[key] = trio.current_time() + away
                logger.info("client %d: its key is refused for %g s", record.number, away)
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
        key = _key(request)
        if self.config.reject_auth or not key:
            return False
        return not self.config.api_keys or key in self.config.api_keys


def _key(request: WebSocketRequest) -> str:
    keys = parse_qs(urlsplit(request.path).query).get("apikey", [])
    return keys[0] if keys else ""


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
