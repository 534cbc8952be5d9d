"""The Kafka stage: produce every message of every ``Outgoing``, in order, and count what Kafka
acknowledged.

librdkafka's blocking calls (``poll``, ``flush``) never run on the trio thread. ``produce`` is a
quick non-blocking C call, so the publisher task calls it directly; one poll thread serves
librdkafka's callbacks and, at the end, flushes with a deadline.

No Python code runs for a successful delivery: with ``delivery.report.only.error`` the
client calls back only for failures, and ``delivered`` is derived from the queue length, since
every message produced is either still queued, failed or delivered. A Python callback per
delivered message cost a quarter of a bare producer's throughput (270k → 196k messages/s on
Tansu).

Nothing is given up while the process runs, however long the broker is away: messages wait in
the local queue (``message.timeout.ms`` is infinite), and a full queue is backpressure. A message
fails only on a permanent error (unknown topic, too large...), or at the end, if Kafka has not
acknowledged it by the flush deadline. Either way it goes to the failed-messages file
(:mod:`.failed`), never into the void.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import attrs
import confluent_kafka
import trio
from confluent_kafka import KafkaException, Producer

from finazon_trio.errors import ConfigurationError, KafkaError
from finazon_trio.events import Message, Outgoing
from finazon_trio.observe.metrics import PublisherMetrics, latency_bucket
from finazon_trio.observe.ratelog import RateLimitedLog
from finazon_trio.settings import KafkaSettings
from finazon_trio.sink.admin import DOWN, UP, Config, endpoint_of, librdkafka_logger, reason
from finazon_trio.sink.failed import FailedFile

logger = logging.getLogger(__name__)

#: Throughput first, within a latency budget: lz4 is cheap to compress; ``linger.ms`` lets
#: batches fill at high rates (a frame's 91 records go out together at any rate) for at most
#: 20 ms of added latency; the local queue holds about a second of full-speed production (more
#: bought no throughput on Tansu, and each queued message also keeps its Python original
#: alive), and only failures are reported. Idempotence keeps each partition's order and drops
#: the duplicates of retried batches, across broker restarts too; ``message.timeout.ms=0``
#: keeps retrying until the flush deadline (librdkafka's default fails a message after 5 min,
#: and the ones queued behind it would then overtake it).
PRODUCER_DEFAULTS: Final[Config] = {
    "client.id": "finazon-trio",
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 200_000,
    "queue.buffering.max.kbytes": 131_072,
    "message.timeout.ms": 0,
    "delivery.report.only.error": True,
}
#: How often the poll thread wakes up: the resolution of the latency figures and of
#: backpressure wake-ups.
POLL_INTERVAL = 0.01
#: Seconds to wait for the reports of the messages purged at the flush deadline.
PURGE_WAIT = 5.0
_PURGED = frozenset(
    {confluent_kafka.KafkaError._PURGE_QUEUE, confluent_kafka.KafkaError._PURGE_INFLIGHT}
)
#: Why a message handed to the publisher after :meth:`Publisher.abandon_flush` was not produced.
ABANDONED = "not produced: the flush was abandoned"
#: Undelivered messages kept in :attr:`Publisher.failures`.
FAILURES_KEPT = 10_000
#: At most one failure log line per this many seconds (with the count of those left out).
FAILURE_LOG_INTERVAL = 5.0


def producer_config(kafka: KafkaSettings, bootstrap: str) -> Config:
    """The producer settings: :data:`PRODUCER_DEFAULTS`, overridden by ``kafka.config``."""
    return {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, **dict(kafka.config)}


@attrs.frozen(slots=True)
class Failure:
    """A message Kafka did not take, and why."""

    message: Message
    error: str


class Publisher:
    """Produces the records of every ``Outgoing`` it receives, in order, and flushes at the end.

    Counters go to ``metrics``: ``produced`` and ``backpressure_waits`` from the publisher task,
    the rest (and ``kafka_state`` once running) from the poll thread. Once :meth:`run` returns,
    ``produced == delivered + failed + unflushed`` exactly. Failed messages are counted and
    logged (rate-limited); every undelivered one (failed or unflushed) is appended to ``failed``
    if given, and the last :data:`FAILURES_KEPT` are kept in :attr:`failures`, with their
    original timestamp and headers.
    """

    def __init__(
        self,
        config: Config,
        metrics: PublisherMetrics,
        flush_timeout: float,
        failed: FailedFile | None = None,
    ) -> None:
        self.metrics = metrics
        self.flush_timeout = flush_timeout
        #: Messages not acknowledged when the flush deadline passed (set when :meth:`run` ends).
        self.unflushed = 0
        self.failures: deque[Failure] = deque(maxlen=FAILURES_KEPT)
        self._failed = failed
        self._endpoint = endpoint_of(config)
        try:
            self._producer = Producer(
                {**config, "error_cb": self._on_error},
                logger=librdkafka_logger,
            )
        except KafkaException as exc:
            raise ConfigurationError(f"invalid Kafka setting: {reason(exc)}") from None
        self._produce: Callable[..., None] = self._producer.produce
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._abandoned_because = ""
        self._fatal: str | None = None
        self._failure_log = RateLimitedLog(logger, FAILURE_LOG_INTERVAL)
        self._error_log = RateLimitedLog(logger, FAILURE_LOG_INTERVAL)
        # Written by the poll thread only, except _produce_failures (publisher task only).
        self._delivery_failures = 0
        self._purged = 0
        self._produce_failures = 0
        # Purged messages with their place in the produce order: (Outgoing number, index).
        self._purged_failures: list[tuple[tuple[int, int], Failure]] = []
        # Refused by produce() (publisher task), each with the number of the poll running
        # then: kept only after the next poll, which serves the reports of older failures.
        self._refused: deque[tuple[int, Failure]] = deque()
        self._polls = 0
        # Publisher task only: Outgoings produced so far; messages not produced after an abandon.
        self._outgoings = 0
        self._abandoned: list[Message] = []
        # (messages produced up to and including an Outgoing, its receipt time, produce time)
        self._marks: deque[tuple[int, int, int]] = deque()
        # (queue length at which to wake the publisher task, the event it waits on)
        self._space_waiter: tuple[int, trio.Event] | None = None

    async def run(self, receive: trio.MemoryReceiveChannel[Outgoing]) -> None:
        """Produce everything ``receive`` yields until it is closed, then flush.

        Whether the channel closes or the task is cancelled, the flush takes place, for up to
        ``flush_timeout`` seconds (cancellation cannot cut it short); what is still queued then
        is purged, logged, counted in :attr:`unflushed` and kept like the failed messages. A
        full local queue blocks here (backpressure) until Kafka catches up or
        :meth:`abandon_flush`: nothing is dropped. Raises :class:`KafkaError` (in an exception
        group) if the producer fails fatally.
        """
        token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run_poll_thread, token)
                try:
                    await self._produce_all(receive)
                finally:
                    self._stop.set()
        finally:
            if self._abandoned:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._keep_abandoned)
            self._account(token=None, final=True)
            if self.unflushed:
                logger.warning(
                    "%d messages were not acknowledged by Kafka at %s: %s",
                    self.unflushed,
                    self._endpoint,
                    self._abandoned_because
                    or f"the {self.flush_timeout:g} s flush deadline passed",
                )

    async def _run_poll_thread(self, token: trio.lowlevel.TrioToken) -> None:
        # Shielded, so that it starts even if run() is cancelled at once: it always ends with
        # the flush, once _stop is set.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._poll_thread, token, limiter=trio.CapacityLimiter(1))

    def abandon_flush(self, because: str) -> None:
        """Stop waiting for Kafka (a second Ctrl-C, or the shutdown deadline): what is still
        queued is purged, and what is not produced yet (the rest of the ``Outgoing`` waiting
        for queue space, and whatever else arrives) is not produced; both are counted in
        :attr:`unflushed` and kept (failed-messages file, :attr:`failures`). Safe to call from
        the trio thread at any time. ``because`` ends the warning about what was left."""
        self._abandoned_because = self._abandoned_because or because
        self._abandon.set()
        self._stop.set()
        if self._space_waiter is not None:
            self._space_waiter[1].set()

    async def _produce_all(self, receive: trio.MemoryReceiveChannel[Outgoing]) -> None:
        metrics = self.metrics
        marks = self._marks
        async with receive:
            async for outgoing in receive:
                messages = outgoing.messages
                if self._abandon.is_set():
                    self._abandoned.extend(messages)
                    continue
                self._outgoings += 1
                reports = _Reports(self, messages, self._outgoings)
                done = self._produce_from(messages, 0, reports)
                metrics.produced += done
                try:
                    while done < len(messages) and not self._abandon.is_set():
                        await self._wait_for_space()
                        more = self._produce_from(messages, done, reports)
                        metrics.produced += more - done
                        done = more
                finally:  # given up, or cancelled while waiting for space
                    self._abandoned.extend(messages[done:])
                marks.append((metrics.produced, outgoing.t_ns, time.time_ns()))

    def _produce_from(self, messages: list[Message], start: int, reports: _Reports) -> int:
        """Produce ``messages[start:]`` until the local queue is full; the index reached."""
        produce = self._produce
        for i in range(start, len(messages)):
            topic, key, value, timestamp, headers = messages[i]
            try:
                # Positional arguments (partition -1: the partitioner; callback alias None):
                # keywords cost 1.8 instead of 0.8 us per call, 91 calls a frame.
                produce(topic, value, key, -1, reports, None, timestamp, headers)
            except BufferError:
                return i
            except KafkaException as exc:  # refused before queueing, e.g. message too large
                self._produce_failures += 1
                self._refused.append((self._polls, Failure(messages[i], reason(exc))))
        return len(messages)

    async def _wait_for_space(self) -> None:
        """Wait until the poll thread sees the local queue half drained (or the flush is
        abandoned)."""
        if self._abandon.is_set():
            return
        self.metrics.backpressure_waits += 1
        event = trio.Event()
        self._space_waiter = (len(self._producer) // 2, event)
        try:
            await event.wait()
        finally:
            self._space_waiter = None

    def _keep_abandoned(self) -> None:
        """Count and keep what was never produced (in a worker thread: it writes a file)."""
        for message in self._abandoned:
            self.failures.append(Failure(message, ABANDONED))
            if self._failed is not None:
                self._failed.add(message, ABANDONED)
        if self._failed is not None:
            self._failed.write_pending()

    # --- the poll thread ---------------------------------------------------------------------

    def _poll_thread(self, token: trio.lowlevel.TrioToken) -> None:
        producer = self._producer
        try:
            while not self._stop.is_set():
                self._polls += 1
                producer.poll(POLL_INTERVAL)
                self._keep_refused()
                self._check_fatal()
                self._account(token)
                if self._failed is not None:
                    self._failed.write_pending()
        finally:
            self._flush(token)
            self._keep_refused(everything=True)
            self._keep_purged()
        self._check_fatal()

    def _keep_refused(self, *, everything: bool = False) -> None:
        """Keep the messages produce() refused before the last poll began, so that they come
        after the older failures that poll reported (a missing topic fails the queued
        messages first, then refuses new ones)."""
        while self._refused and (everything or self._refused[0][0] < self._polls):
            self._failure(self._refused.popleft()[1])

    def _flush(self, token: trio.lowlevel.TrioToken) -> None:
        """Flush until the deadline, then purge what is left so that it is counted exactly."""
        producer = self._producer
        if len(producer):
            logger.info(
                "flushing %d messages to Kafka (up to %g s)", len(producer), self.flush_timeout
            )
        deadline = time.monotonic() + self.flush_timeout
        while (
            len(producer)
            and not self._abandon.is_set()
            and (remaining := deadline - time.monotonic()) > 0
        ):
            self._polls += 1
            producer.flush(min(remaining, 0.1))
            self._keep_refused()
            self._account(token)
        # The queue length also counts pending logs and errors, so it cannot tell how many
        # messages are left: purged messages get a delivery report each, and are counted there.
        if len(producer):
            producer.purge(in_queue=True, in_flight=True, blocking=True)
            producer.flush(PURGE_WAIT)

    def _keep_purged(self) -> None:
        """Write the purged messages in the order they were produced, after the failures so far
        (purge reports come partition by partition)."""
        self._purged_failures.sort(key=lambda entry: entry[0])
        if self._failed is not None:
            for _, failure in self._purged_failures:
                self._failed.add(failure.message, failure.error)
            self._failed.write_pending()
        self._purged_failures.clear()

    def _check_fatal(self) -> None:
        if self._fatal is not None:
            raise KafkaError(f"the Kafka producer failed for good: {self._fatal}")

    def _account(self, token: trio.lowlevel.TrioToken | None, *, final: bool = False) -> None:
        """Update the counters; wake the publisher task if it waits for space.

        While running, ``delivered`` is derived from the queue length, reading ``produced``
        first so that it errs on the side of too few; ``final`` (once the poll thread is done)
        counts exactly, from the purge reports and what was abandoned.
        """
        metrics = self.metrics
        produced = metrics.produced
        failed = self._delivery_failures + self._produce_failures
        queued = len(self._producer)
        metrics.failed = failed
        metrics.queued = queued
        if final:
            abandoned = len(self._abandoned)
            metrics.produced = produced = produced + abandoned
            self.unflushed = self._purged + abandoned
            metrics.delivered = produced - failed - self.unflushed
            self._abandoned.clear()
            return
        delivered = max(metrics.delivered, produced - failed - queued)
        if delivered > metrics.delivered and metrics.kafka_state == DOWN:
            metrics.kafka_state = UP
            logger.info("Kafka at %s takes messages again", self._endpoint)
        metrics.delivered = delivered
        done = produced - queued
        if self._marks and self._marks[0][0] <= done:
            now = time.time_ns()
            while self._marks and self._marks[0][0] <= done:
                _, received_ns, produced_ns = self._marks.popleft()
                metrics.ack_latency[latency_bucket(now - produced_ns)] += 1
                metrics.receipt_latency[latency_bucket(now - received_ns)] += 1
        waiter = self._space_waiter
        if token is not None and waiter is not None and queued <= waiter[0]:
            self._space_waiter = None
            token.run_sync_soon(waiter[1].set)

    def _undelivered(
        self, message: Message, error: confluent_kafka.KafkaError, order: tuple[int, int]
    ) -> None:
        failure = Failure(message, error.str())
        if error.code() in _PURGED:  # left at the flush deadline: reported as unflushed
            self._purged += 1
            self.failures.append(failure)
            self._purged_failures.append((order, failure))
        else:
            self._delivery_failures += 1
            self._failure(failure)

    def _failure(self, failure: Failure) -> None:
        self.failures.append(failure)
        if self._failed is not None:
            self._failed.add(failure.message, failure.error)
        topic, key = failure.message[:2]
        self._failure_log(
            "delivery to Kafka failed: topic %s, key %s: %s",
            topic,
            key.decode(errors="replace"),
            failure.error,
        )

    def _on_error(self, error: confluent_kafka.KafkaError) -> None:
        if error.fatal():
            self._fatal = error.str()
            return
        if error.code() == confluent_kafka.KafkaError._ALL_BROKERS_DOWN:
            self.metrics.kafka_state = DOWN
        self._error_log("Kafka at %s: %s", self._endpoint, error.str())


class _Reports:
    """The delivery report callback of one ``Outgoing``'s messages, called on the poll thread and
    (with ``delivery.report.only.error``) for failures only.

    A failed message's report lacks its timestamp, so the original is looked up here: one
    object per ``Outgoing`` rather than a callback object per message.
    """

    __slots__ = ("_index", "_messages", "_number", "_publisher")

    def __init__(self, publisher: Publisher, messages: list[Message], number: int) -> None:
        self._publisher = publisher
        self._messages = messages
        self._number = number
        self._index: dict[tuple[str | None, object, object], int] | None = None

    def __call__(
        self, error: confluent_kafka.KafkaError | None, report: confluent_kafka.Message
    ) -> None:
        if error is None:
            return
        if self._index is None:
            self._index = {
                (m[0], m[1] or None, m[2] or None): i for i, m in enumerate(self._messages)
            }
        i = self._index[report.topic(), report.key() or None, report.value() or None]
        self._publisher._undelivered(self._messages[i], error, (self._number, i))
