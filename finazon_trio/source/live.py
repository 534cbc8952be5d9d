"""The live source: Finazon's WebSocket, kept honest and reconnected, feeding the pipeline.

Each of the ``--connections`` slots owns a share of the tickers and loops on its own:
connect to ``URL?apikey=KEY`` → subscribe → read until the connection dies (closed, ping
timeout, stale) → back off with full jitter → connect again. Every text frame sent and received
goes downstream as a :class:`~finazon_trio.events.Sent` / :class:`~finazon_trio.events.Received`,
framed by ``connected`` / ``disconnected`` lifecycle events. One open connection is a
:class:`~finazon_trio.source.connection.Connection`. The policies (backoff, rate limit, message
classification, chunking) are pure and live in :mod:`.backoff` and :mod:`.protocol`.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable, Mapping

import trio
from trio_websocket import (
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    open_websocket_url,
)

from finazon_trio.errors import AuthenticationError, ConfigurationError
from finazon_trio.events import SourceEvent
from finazon_trio.observe.metrics import SourceMetrics, SourceState
from finazon_trio.redaction import redact, redacted_log
from finazon_trio.settings import Settings
from finazon_trio.source.backoff import Backoff, RetriesExhaustedError
from finazon_trio.source.connection import Connection, Ended
from finazon_trio.source.protocol import (
    event_messages,
    is_auth_failure,
    split_tickers,
    url_with_key,
)

__all__ = ["live_source", "overall_state"]

logger = logging.getLogger(__name__)

#: Seconds the closing handshake may take before the socket is simply closed.
DISCONNECT_TIMEOUT = 2.0
#: Messages trio-websocket buffers between the socket and this reader. Past it the socket is
#: not read (TCP backpressure); the pipeline's channel buffers the rest.
MESSAGE_QUEUE = 256
#: Bytes read from the socket at a time.
RECEIVE_BYTES = 64 * 1024
#: trio-websocket logs the URL it connects to (key included) at DEBUG level on this logger.
WEBSOCKET_LOGGER = "trio-websocket"

#: Worst first: the overall state is the worst of the slots'.
_SEVERITY = (
    SourceState.FAILED,
    SourceState.STALE,
    SourceState.BACKING_OFF,
    SourceState.CONNECTING,
    SourceState.SUBSCRIBING,
    SourceState.SUBSCRIBED,
    SourceState.STOPPED,
)


def overall_state(slot_states: Mapping[int, SourceState]) -> SourceState:
    """The state to show for the whole source: the worst of its slots'."""
    rank = {state: index for index, state in enumerate(_SEVERITY)}
    return min(slot_states.values(), key=lambda s: rank.get(s, -1), default=SourceState.STOPPED)


async def live_source(
    settings: Settings,
    send: trio.MemorySendChannel[SourceEvent],
    metrics: SourceMetrics,
    *,
    jitter: Callable[[], float] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Stream the subscription's tickers from Finazon into ``send`` until cancelled.

    Reconnects after every failure; raises :class:`AuthenticationError` at once when the key
    is refused, :class:`RetriesExhaustedError` when ``max_retries`` failures come in a row, and
    :class:`ConfigurationError` (before connecting) without a key or tickers. ``send`` is closed
    on exit. Cancellation closes the sockets and emits a last ``disconnected`` per open
    connection. ``jitter`` (tests) replaces ``random.random`` in the backoff.
    """
    async with send:
        live = settings.live
        if not live.api_key.strip():
            raise ConfigurationError("no Finazon API key: set FINAZON_API_KEY")
        groups = split_tickers(settings.subscription.tickers, live.connections)
        if not groups[0]:
            raise ConfigurationError("no tickers to subscribe to")
        subscriptions = [event_messages("subscribe", settings.subscription, g) for g in groups]
        source = _Source(settings, send, metrics, jitter, slots=len(groups))
        task_status.started()
        try:
            with redacted_log(WEBSOCKET_LOGGER, live.api_key):
                async with trio.open_nursery() as nursery:
                    for slot, tickers in enumerate(groups, 1):
                        nursery.start_soon(source.run_slot, slot, tickers, subscriptions[slot - 1])
        except* (AuthenticationError, ConfigurationError, RetriesExhaustedError) as group:
            raise group.exceptions[0] from None
        finally:
            source.stopped()


class _Source:
    """What the slots share: settings, the output channel, metrics and connection numbers."""

    def __init__(
        self,
        settings: Settings,
        send: trio.MemorySendChannel[SourceEvent],
        metrics: SourceMetrics,
        jitter: Callable[[], float] | None,
        *,
        slots: int,
    ) -> None:
        self.settings = settings
        self.send = send
        self.metrics = metrics
        self.key = settings.live.api_key
        self.url = url_with_key(settings.live.url, self.key)
        self.endpoint = redact(self.url, (self.key,))
        self.numbers = itertools.count(1)
        self._jitter = jitter or random.random
        self._retry_at: dict[int, float] = {}
        self._ever_connected: set[int] = set()
        self._slots = slots
        self._refused: set[int] = set()  # slots whose tickers or subscription were refused
        metrics.endpoint = self.endpoint

    def redact(self, text: str) -> str:
        return redact(text, (self.key,))

    def set_state(self, slot: int, state: SourceState) -> None:
        self.metrics.slot_states[slot] = state
        self.metrics.state = overall_state(self.metrics.slot_states)

    def stopped(self) -> None:
        for slot, state in self.metrics.slot_states.items():
            if state != SourceState.FAILED:
                self.metrics.slot_states[slot] = SourceState.STOPPED
        self.metrics.state = overall_state(self.metrics.slot_states)
        self.metrics.next_attempt_at = None

    async def run_slot(self, slot: int, tickers: tuple[str, ...], messages: list[str]) -> None:
        """Connect, stream, and reconnect with backoff, for ever or until a final error."""
        live = self.settings.live
        backoff = Backoff(
            max_backoff=live.max_backoff, max_retries=live.max_retries, jitter=self._jitter
        )
        while True:
            self.set_state(slot, SourceState.CONNECTING)
            ended = await self._attempt(slot, tickers, messages)
            if ended.auth:
                self.set_state(slot, SourceState.FAILED)
                raise AuthenticationError(
                    f"Finazon refused the API key ({ended.reason}; {self.endpoint}): check "
                    "FINAZON_API_KEY. Not retrying: another attempt would be refused too."
                )
            if ended.refused:
                self.set_state(slot, SourceState.FAILED)
                self._refused.add(slot)
                if len(self._refused) == self._slots:
                    raise ConfigurationError(
                        f"{ended.reason} ({self.endpoint}): {ended.refused}. Not retrying: "
                        "another attempt would be refused too."
                    )
                logger.error(
                    "connection slot %d: %s; %s. The other connections go on.",
                    slot,
                    ended.reason,
                    ended.refused,
                )
                return
            delay = backoff.next_delay(ended.healthy_for)
            if delay is None:
                self.set_state(slot, SourceState.FAILED)
                raise RetriesExhaustedError(
                    f"gave up on {self.endpoint} after {live.max_retries} retries in a row "
                    f"(--max-retries); the last attempt ended with: {ended.reason}"
                )
            logger.warning(
                "connection slot %d: %s; next attempt in %.2f s", slot, ended.reason, delay
            )
            self._retry_at[slot] = time.time() + delay
            self.metrics.next_attempt_at = min(self._retry_at.values())
            self.set_state(slot, SourceState.BACKING_OFF)
            try:
                await trio.sleep(delay)
            finally:
                del self._retry_at[slot]
                self.metrics.next_attempt_at = min(self._retry_at.values(), default=None)

    async def _attempt(self, slot: int, tickers: tuple[str, ...], messages: list[str]) -> Ended:
        live = self.settings.live
        connection: Connection | None = None
        failure: Ended | None = None
        try:
            with trio.CancelScope() as abort:
                async with open_websocket_url(
                    self.url,
                    message_queue_size=MESSAGE_QUEUE,
                    receive_buffer_size=RECEIVE_BYTES,
                    connect_timeout=live.connect_timeout,
                    disconnect_timeout=DISCONNECT_TIMEOUT,
                ) as ws:
                    number = next(self.numbers)
                    self._connected(slot, number)
                    connection = Connection(
                        self, ws, live, number=number, slot=slot, tickers=tickers, messages=messages
                    )
                    await connection.run()
                    if connection.abort:
                        abort.cancel()  # the peer is unresponsive: skip the closing handshake
        except ConnectionRejected as exc:
            failure = self._rejected(exc)
        except ConnectionTimeout:
            failure = Ended(f"handshake timed out after {live.connect_timeout:g} s")
        except (HandshakeError, OSError, trio.BrokenResourceError) as exc:
            cause = exc.__cause__ or exc
            failure = Ended(self.redact(f"connecting failed: {cause!r}"))
        if connection is not None:
            return connection.ended
        assert failure is not None
        self.metrics.connect_failures += 1
        return failure

    def _rejected(self, exc: ConnectionRejected) -> Ended:
        body = (exc.body or b"").decode("utf-8", "replace")
        reason = self.redact(f"handshake rejected with HTTP {exc.status_code} {body[:200]}")
        return Ended(reason.strip(), auth=exc.status_code in (401, 403) or is_auth_failure(body))

    def _connected(self, slot: int, number: int) -> None:
        self.metrics.connects += 1
        if slot in self._ever_connected:
            self.metrics.reconnects += 1
        self._ever_connected.add(slot)
        self.metrics.connection = number
