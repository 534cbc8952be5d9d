"""One open Finazon WebSocket of the live source: its reader, subscriber, heartbeat and pings.

:class:`Connection` streams until the connection dies and says why in :attr:`Connection.ended`;
the slot loop in :mod:`.live` decides what happens next.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Protocol

import attrs
import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection

from finazon_trio.events import Lifecycle, Received, Sent, SourceEvent
from finazon_trio.observe.metrics import SourceMetrics, SourceState
from finazon_trio.redaction import REDACTED
from finazon_trio.settings import LiveSettings
from finazon_trio.source.backoff import RateLimiter
from finazon_trio.source.protocol import (
    HEARTBEAT,
    Ack,
    AuthFailure,
    HeartbeatReply,
    ServerError,
    ServerMessage,
    SubscriptionRefused,
    TickerError,
    classify,
    is_auth_failure,
)

logger = logging.getLogger("finazon_trio.source.live")

#: A connection quiet for this fraction of the stale timeout shows as ``stale``.
STALE_WARNING = 2 / 3
#: How long the last ``disconnected`` event may wait for room downstream when shutting down.
EMIT_TIMEOUT = 1.0


class Host(Protocol):
    """What a connection needs from the source that opened it."""

    send: trio.MemorySendChannel[SourceEvent]
    metrics: SourceMetrics
    key: str
    endpoint: str

    def set_state(self, slot: int, state: SourceState) -> None: ...

    def redact(self, text: str) -> str: ...


@attrs.frozen
class Ended:
    """Why a connection (or an attempt) ended, and how long it had been healthy."""

    reason: str
    healthy_for: float = 0.0
    auth: bool = False
    #: The server refused every ticker or the subscription itself: what to check (final).
    refused: str = ""


class Connection:
    """One open WebSocket: its reader, subscriber, heartbeat and ping tasks."""

    def __init__(
        self,
        source: Host,
        ws: WebSocketConnection,
        live: LiveSettings,
        *,
        number: int,
        slot: int,
        tickers: tuple[str, ...],
        messages: list[str],
    ) -> None:
        self.source = source
        self.ws = ws
        self.live = live
        self.number = number
        self.slot = slot
        self.tickers = frozenset(tickers)
        self.messages = messages
        self.metrics = source.metrics
        #: Set when it ends: why, and whether to skip the closing handshake.
        self.ended = Ended("closed")
        self.abort = False
        self._reason: str | None = None
        self._auth = False
        self._scope = trio.CancelScope()
        self._limiter = RateLimiter()
        self._send_lock = trio.Lock()
        self._opened = self._last_message = trio.current_time()
        self._acked = False
        self._subscribed: set[str] = set()
        self._refused: dict[str, str] = {}  # ticker -> the server's error
        self._refusal = ""
        # While the pipeline pushes back, the server cannot be blamed for a late pong.
        self._blocked = False
        self._unblocked_at = -math.inf

    async def run(self) -> None:
        """Stream until the connection dies; ``ended`` says why."""
        logger.info(
            "connection %d open to %s (%d tickers)",
            self.number,
            self.source.endpoint,
            len(self.tickers),
        )
        try:
            await self._emit(Lifecycle(time.time_ns(), self.number, "connected"))
            self.source.set_state(self.slot, SourceState.SUBSCRIBING)
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._subscribe)
                nursery.start_soon(self._heartbeat)
                nursery.start_soon(self._ping)
                await self._read()
        finally:
            reason = self._reason or "shutdown"
            healthy_for = self._last_message - self._opened
            self.ended = Ended(reason, healthy_for, self._auth, self._refusal)
            self.metrics.disconnects += 1
            self.metrics.last_disconnect = reason
            self.metrics.subscribed -= self._subscribed
            # Nobody downstream any more (broken, closed) means the run is over anyway.
            with (
                trio.move_on_after(EMIT_TIMEOUT, shield=True),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await self._emit(Lifecycle(time.time_ns(), self.number, "disconnected", reason))

    def _die(
        self, reason: str, *, abort: bool = False, auth: bool = False, refused: str = ""
    ) -> None:
        if self._reason is None:
            self._reason = self.source.redact(reason)
            self.abort = abort
            self._auth = auth
            self._refusal = refused
        self._scope.cancel()

    def _closed(self, reason: CloseReason | None) -> None:
        # A server may refuse the key by closing with a reason that says so.
        auth = reason is not None and is_auth_failure(reason.reason or "")
        self._die(describe_close(reason), auth=auth)

    async def _emit(self, event: SourceEvent) -> None:
        try:
            self.source.send.send_nowait(event)
        except trio.WouldBlock:
            self._blocked = True
            try:
                await self.source.send.send(event)
            finally:
                self._blocked = False
                self._unblocked_at = trio.current_time()

    async def _read(self) -> None:
        stale = self.live.stale_timeout
        quiet_after = stale * STALE_WARNING
        try:
            while True:
                with trio.CancelScope() as quiet:
                    while True:
                        quiet.deadline = trio.current_time() + quiet_after
                        message = await self.ws.get_message()
                        quiet.deadline = math.inf
                        await self._received(message)
                self.source.set_state(self.slot, SourceState.STALE)
                logger.warning("connection %d: no message for %g s", self.number, quiet_after)
                late: str | bytes | None = None
                with trio.move_on_after(stale - quiet_after):
                    late = await self.ws.get_message()
                if late is None:
                    self._die(f"stale: no message for {stale:g} s", abort=True)
                    return
                self.source.set_state(
                    self.slot, SourceState.SUBSCRIBED if self._acked else SourceState.SUBSCRIBING
                )
                # Outside the deadline: waiting for room downstream is not silence, and a
                # cancelled wait would lose the message.
                await self._received(late)
        except ConnectionClosed as exc:
            self._closed(exc.reason)

    async def _received(self, message: str | bytes) -> None:
        t_ns = time.time_ns()
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        if self.source.key in text:  # a server echoing the key must not get it recorded
            text = text.replace(self.source.key, REDACTED)
        self._last_message = trio.current_time()
        self.metrics.frames += 1
        slots = self.metrics.slot_frames
        slots[self.slot] = slots.get(self.slot, 0) + 1
        self.metrics.last_message_ns = t_ns
        await self._emit(Received(t_ns, self.number, text))
        kind = classify(text, self.tickers)
        if kind is not None:
            self._handle(kind)

    def _handle(self, kind: ServerMessage) -> None:
        if isinstance(kind, Ack):
            if kind.event == "subscribe":
                tickers = kind.tickers or tuple(self.tickers.difference(self.metrics.ticker_errors))
                self._subscribed.update(tickers)
                self.metrics.subscribed.update(tickers)
                self._acked = True
                self.source.set_state(self.slot, SourceState.SUBSCRIBED)
                shown = ", ".join(sorted(tickers)[:10]) + (" ..." if len(tickers) > 10 else "")
                logger.info(
                    "connection %d subscribed to %d tickers: %s", self.number, len(tickers), shown
                )
        elif isinstance(kind, TickerError):
            self.metrics.ticker_errors[kind.ticker] += 1
            self._subscribed.discard(kind.ticker)
            self.metrics.subscribed.discard(kind.ticker)
            logger.warning(
                "connection %d: Finazon refused ticker %s: %s",
                self.number,
                kind.ticker,
                self.source.redact(kind.message),
            )
            if kind.ticker in self.tickers:
                self._refused[kind.ticker] = self.source.redact(kind.message)
            if not self._subscribed and self._refused.keys() >= self.tickers:
                shown = "; ".join(f"{t}: {m}" for t, m in sorted(self._refused.items())[:5])
                more = f" and {len(self._refused) - 5} more" if len(self._refused) > 5 else ""
                self._die(
                    f"Finazon refused every ticker ({shown}{more})",
                    refused="check --tickers, and that they belong to --dataset",
                )
        elif isinstance(kind, SubscriptionRefused):
            self._die(
                f"Finazon refused the subscription: {kind.message}",
                refused="check --dataset, --frequency and --aggregation",
            )
        elif isinstance(kind, AuthFailure):
            self._die(f"server error: {kind.message}", abort=True, auth=True)
        elif isinstance(kind, ServerError):
            logger.warning(
                "connection %d: server error: %s", self.number, self.source.redact(kind.message)
            )
        elif not isinstance(kind, HeartbeatReply):
            logger.debug("connection %d: %s", self.number, self.source.redact(kind.message))

    async def _send_event(self, text: str) -> None:
        """Send one client event within the rate limit, and emit it downstream first."""
        async with self._send_lock:
            await trio.sleep_until(self._limiter.next_allowed(trio.current_time()))
            self._limiter.record(trio.current_time())
            await self._emit(Sent(time.time_ns(), self.number, text))
            try:
                await self.ws.send_message(text)
            except ConnectionClosed as exc:
                self._closed(exc.reason)

    async def _subscribe(self) -> None:
        for text in self.messages:
            await self._send_event(text)

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self.live.heartbeat_interval)
            await self._send_event(HEARTBEAT)

    async def _ping(self) -> None:
        while True:
            await trio.sleep(self.live.ping_interval)
            started = trio.current_time()
            try:
                with trio.move_on_after(self.live.ping_timeout) as waiting:
                    await self.ws.ping()
            except ConnectionClosed:
                return  # the reader says why
            excused = self._blocked or self._unblocked_at >= started
            if waiting.cancelled_caught and not excused:
                timeout = self.live.ping_timeout
                self._die(f"ping timeout: no pong within {timeout:g} s", abort=True)
                return


def describe_close(reason: CloseReason | None) -> str:
    """A closed WebSocket's reason in words."""
    if reason is None:
        return "connection closed"
    if reason.code == 1006:
        return "connection lost (no closing handshake)"
    detail = f": {reason.reason}" if reason.reason else ""
    return f"closed by the server ({reason.code} {reason.name}{detail})"
