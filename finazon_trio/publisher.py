"""The Kafka stage: produce every message of every ``Outgoing``, in order, and count what Kafka
acknowledged.

librdkafka's blocking calls (``poll``, ``flush``, admin requests) never run on the trio thread.
``produce`` is a quick non-blocking C call, so the publisher task calls it directly; one poll
thread serves librdkafka's callbacks and, at the end, flushes with a deadline.

No Python code runs for a successful delivery: with ``delivery.report.only.error`` the
client calls back only for failures, and ``delivered`` is derived from the queue length, since
every message produced is either still queued, failed or delivered. A Python callback per
delivered message cost a quarter of a bare producer's throughput (270k → 196k messages/s on
Tansu).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias

import attrs
import confluent_kafka
import trio
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from .errors import ConfigurationError, KafkaError
from .events import Message, Outgoing
from .metrics import PublisherMetrics
from .settings import KafkaSettings

logger = logging.getLogger(__name__)
#: librdkafka's own log lines (connection failures, retries...), at their own levels.
librdkafka_logger = logging.getLogger(f"{__name__}.librdkafka")

Config: TypeAlias = dict[str, str | int | bool]

#: Throughput first, within a latency budget: lz4 is cheap to compress; ``linger.ms`` lets
#: batches fill at high rates (a frame's 91 records go out together at any rate) for at most
#: 20 ms of added latency; the local queue holds about a second of full-speed production (more
#: bought no throughput on Tansu, and each queued message also keeps its Python original
#: alive), and only failures are reported.
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
    "delivery.report.only.error": True,
}
#: Seconds an admin request (create topics, list topics) may take.
ADMIN_TIMEOUT = 30.0
#: After this long without an answer, :func:`wait_for_kafka` says that it is waiting.
WAIT_NOTICE_AFTER = 2.0
#: How often the poll thread wakes up: the resolution of the latency figures and of
#: backpressure wake-ups.
POLL_INTERVAL = 0.01
#: Seconds to wait for the reports of the messages purged at the flush deadline.
PURGE_WAIT = 5.0
_PURGED = frozenset(
    {confluent_kafka.KafkaError._PURGE_QUEUE, confluent_kafka.KafkaError._PURGE_INFLIGHT}
)
#: Undelivered messages kept in :attr:`Publisher.failures`.
FAILURES_KEPT = 10_000
#: At most one failure log line per this many seconds (with the count of those left out).
FAILURE_LOG_INTERVAL = 5.0
#: Upper bounds (ms) of the latency histogram buckets in :class:`PublisherMetrics`: four per
#: doubling from 1 ms to about 55 s; the last bucket also holds everything slower.
LATENCY_BUCKETS_MS: Final[tuple[float, ...]] = tuple(2 ** (i / 4) for i in range(64))


def producer_config(kafka: KafkaSettings, bootstrap: str) -> Config:
    """The producer settings: :data:`PRODUCER_DEFAULTS`, overridden by ``kafka.config``."""
    return {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, **dict(kafka.config)}


def _endpoint(config: Config) -> str:
    return str(config.get("bootstrap.servers", "?"))


def _admin(config: Config, **extra: Any) -> AdminClient:
    try:
        return AdminClient({**config, **extra}, logger=librdkafka_logger)
    except KafkaException as exc:
        raise ConfigurationError(f"invalid Kafka setting: {_reason(exc)}") from None


def _client_error(exc: KafkaException) -> confluent_kafka.KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, confluent_kafka.KafkaError) else None


def _reason(exc: KafkaException) -> str:
    error = _client_error(exc)
    return str(exc) if error is None else error.str()


# The timeout bounds the probe inside librdkafka, which trio cannot cancel.
async def wait_for_kafka(config: Config, timeout: float) -> None:  # noqa: ASYNC109
    """Return once the cluster answers a metadata request; :class:`KafkaError` naming the
    endpoint and the last connection error after ``timeout`` seconds.

    Logs a warning if the cluster does not answer at once. Cancelling abandons the probe
    thread, which ends by itself within ``timeout``.
    """
    endpoint = _endpoint(config)
    errors: list[str] = []

    def on_error(error: confluent_kafka.KafkaError) -> None:
        if error.code() != confluent_kafka.KafkaError._ALL_BROKERS_DOWN:
            errors.append(error.str())

    def probe() -> str | None:
        # Reconnect at least once a second, so a broker that comes up late is seen at once;
        # connection errors are reported below, not logged by librdkafka.
        admin = _admin(config, error_cb=on_error, log_level=0, **{"reconnect.backoff.max.ms": 1000})
        deadline = time.monotonic() + timeout
        try:
            admin.list_topics(timeout=min(WAIT_NOTICE_AFTER, timeout))
            return None
        except KafkaException as exc:
            failure = exc
        admin.poll(0)  # serves error_cb
        if (remaining := deadline - time.monotonic()) > 0:
            logger.warning(
                "Kafka at %s does not answer yet (%s); waiting up to %g s",
                endpoint,
                errors[-1] if errors else _reason(failure),
                timeout,
            )
            try:
                admin.list_topics(timeout=remaining)
                logger.info("Kafka at %s answered", endpoint)
                return None
            except KafkaException as exc:
                failure = exc
            admin.poll(0)
        return errors[-1] if errors else _reason(failure)

    failure = await trio.to_thread.run_sync(probe, abandon_on_cancel=True)
    if failure is not None:
        raise KafkaError(f"Kafka at {endpoint} did not answer within {timeout:g} s: {failure}")


async def ensure_topics(
    config: Config, topics: Sequence[str], partitions: int, replication_factor: int
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are (with a
    warning if their partition count differs). :class:`KafkaError` if any cannot be created.
    Cancelling abandons the admin thread, which ends within :data:`ADMIN_TIMEOUT`."""
    endpoint = _endpoint(config)
    wanted = list(dict.fromkeys(topics))

    def create() -> list[str]:
        admin = _admin(config)
        new = [NewTopic(t, partitions, replication_factor) for t in wanted]
        futures = admin.create_topics(
            new, operation_timeout=ADMIN_TIMEOUT, request_timeout=ADMIN_TIMEOUT
        )
        problems, existing = [], []
        for topic, future in futures.items():
            try:
                future.result()
                logger.info("created topic %s (%d partitions) on %s", topic, partitions, endpoint)
            except KafkaException as exc:
                error = _client_error(exc)
                if error and error.code() == confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                    existing.append(topic)
                else:
                    problems.append(f"{topic}: {_reason(exc)}")
        if existing and not problems:
            metadata = admin.list_topics(timeout=ADMIN_TIMEOUT)
            for topic in existing:
                found = metadata.topics.get(topic)
                if found is not None and len(found.partitions) != partitions:
                    logger.warning(
                        "topic %s already exists with %d partitions (not %d); using it as is",
                        topic,
                        len(found.partitions),
                        partitions,
                    )
        admin.poll(0)  # serves the logs
        return problems

    problems = await trio.to_thread.run_sync(create, abandon_on_cancel=True)
    if problems:
        raise KafkaError(f"cannot create topics on Kafka at {endpoint}: " + "; ".join(problems))


@attrs.frozen(slots=True)
class Failure:
    """A message Kafka did not take, and why."""

    message: Message
    error: str


class Publisher:
    """Produces the records of every ``Outgoing`` it receives, in order, and flushes at the end.

    Counters go to ``metrics``: ``produced`` and ``backpressure_waits`` from the publisher task,
    the rest from the poll thread. Once :meth:`run` returns, ``produced == delivered + failed +
    unflushed`` exactly. Failed messages are counted and logged (rate-limited); the last
    :data:`FAILURES_KEPT` undelivered ones (failed or unflushed) are kept in :attr:`failures`,
    with their original timestamp and headers.
    """

    def __init__(self, config: Config, metrics: PublisherMetrics, flush_timeout: float) -> None:
        self.metrics = metrics
        self.flush_timeout = flush_timeout
        #: Messages not acknowledged when the flush deadline passed (set when :meth:`run` ends).
        self.unflushed = 0
        self.failures: deque[Failure] = deque(maxlen=FAILURES_KEPT)
        self._endpoint = _endpoint(config)
        try:
            self._producer = Producer(
                {**config, "error_cb": self._on_error},
                logger=librdkafka_logger,
            )
        except KafkaException as exc:
            raise ConfigurationError(f"invalid Kafka setting: {_reason(exc)}") from None
        self._produce: Callable[..., None] = self._producer.produce
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._fatal: str | None = None
        self._failure_log = _RateLimitedLog(FAILURE_LOG_INTERVAL)
        self._error_log = _RateLimitedLog(FAILURE_LOG_INTERVAL)
        # Written by the poll thread only, except _produce_failures (publisher task only).
        self._delivery_failures = 0
        self._purged = 0
        self._produce_failures = 0
        # (messages produced up to and including an Outgoing, its receipt time, produce time)
        self._marks: deque[tuple[int, int, int]] = deque()
        # (queue length at which to wake the publisher task, the event it waits on)
        self._space_waiter: tuple[int, trio.Event] | None = None

    async def run(self, receive: trio.MemoryReceiveChannel[Outgoing]) -> None:
        """Produce everything ``receive`` yields until it is closed, then flush.

        Whether the channel closes or the task is cancelled, the flush takes place, for up to
        ``flush_timeout`` seconds (cancellation cannot cut it short); what is still queued then
        is purged, logged and counted in :attr:`unflushed`. A full local queue blocks here
        (backpressure) until Kafka catches up: nothing is dropped. Raises :class:`KafkaError`
        (in an exception group) if the producer fails fatally.
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
            self._account(token=None, final=True)
            if self.unflushed:
                logger.warning(
                    "%d messages were not acknowledged by Kafka at %s within the %g s flush "
                    "deadline",
                    self.unflushed,
                    self._endpoint,
                    self.flush_timeout,
                )

    async def _run_poll_thread(self, token: trio.lowlevel.TrioToken) -> None:
        # Shielded, so that it starts even if run() is cancelled at once: it always ends with
        # the flush, once _stop is set.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._poll_thread, token, limiter=trio.CapacityLimiter(1))

    def abandon_flush(self) -> None:
        """Cut the flush short (a second Ctrl-C): what is still queued is purged and counted
        in :attr:`unflushed` at once. Safe to call from the trio thread at any time."""
        self._abandon.set()
        self._stop.set()

    async def _produce_all(self, receive: trio.MemoryReceiveChannel[Outgoing]) -> None:
        metrics = self.metrics
        marks = self._marks
        async with receive:
            async for outgoing in receive:
                messages = outgoing.messages
                reports = _Reports(self, messages)
                done = self._produce_from(messages, 0, reports)
                metrics.produced += done
                while done < len(messages):
                    await self._wait_for_space()
                    more = self._produce_from(messages, done, reports)
                    metrics.produced += more - done
                    done = more
                marks.append((metrics.produced, outgoing.t_ns, time.time_ns()))

    def _produce_from(self, messages: list[Message], start: int, reports: _Reports) -> int:
        """Produce ``messages[start:]`` until the local queue is full; the index reached."""
        produce = self._produce
        for i in range(start, len(messages)):
            topic, key, value, timestamp, headers = messages[i]
            try:
                produce(
                    topic, value, key, timestamp=timestamp, headers=headers, on_delivery=reports
                )
            except BufferError:
                return i
            except KafkaException as exc:  # refused before queueing, e.g. message too large
                self._produce_failures += 1
                failure = Failure(messages[i], _reason(exc))
                self.failures.append(failure)
                self._log_failure(failure)
        return len(messages)

    async def _wait_for_space(self) -> None:
        """Wait until the poll thread sees the local queue half drained."""
        self.metrics.backpressure_waits += 1
        event = trio.Event()
        self._space_waiter = (len(self._producer) // 2, event)
        try:
            await event.wait()
        finally:
            self._space_waiter = None

    # --- the poll thread ---------------------------------------------------------------------

    def _poll_thread(self, token: trio.lowlevel.TrioToken) -> None:
        producer = self._producer
        try:
            while not self._stop.is_set():
                producer.poll(POLL_INTERVAL)
                self._check_fatal()
                self._account(token)
        finally:
            self._flush(token)
        self._check_fatal()

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
            producer.flush(min(remaining, 0.1))
            self._account(token)
        # The queue length also counts pending logs and errors, so it cannot tell how many
        # messages are left: purged messages get a delivery report each, and are counted there.
        if len(producer):
            producer.purge(in_queue=True, in_flight=True, blocking=True)
            producer.flush(PURGE_WAIT)

    def _check_fatal(self) -> None:
        if self._fatal is not None:
            raise KafkaError(f"the Kafka producer failed for good: {self._fatal}")

    def _account(self, token: trio.lowlevel.TrioToken | None, *, final: bool = False) -> None:
        """Update the counters; wake the publisher task if it waits for space.

        While running, ``delivered`` is derived from the queue length, reading ``produced``
        first so that it errs on the side of too few; ``final`` (once the poll thread is done)
        counts exactly, from the purge reports.
        """
        metrics = self.metrics
        produced = metrics.produced
        failed = self._delivery_failures + self._produce_failures
        queued = len(self._producer)
        metrics.failed = failed
        metrics.queued = queued
        if final:
            self.unflushed = self._purged
            metrics.delivered = produced - failed - self._purged
            return
        metrics.delivered = max(metrics.delivered, produced - failed - queued)
        done = produced - queued
        if self._marks and self._marks[0][0] <= done:
            now = time.time_ns()
            while self._marks and self._marks[0][0] <= done:
                _, received_ns, produced_ns = self._marks.popleft()
                metrics.ack_latency[_bucket(now - produced_ns)] += 1
                metrics.receipt_latency[_bucket(now - received_ns)] += 1
        waiter = self._space_waiter
        if token is not None and waiter is not None and queued <= waiter[0]:
            self._space_waiter = None
            token.run_sync_soon(waiter[1].set)

    def _undelivered(self, message: Message, error: confluent_kafka.KafkaError) -> None:
        failure = Failure(message, error.str())
        self.failures.append(failure)
        if error.code() in _PURGED:  # left at the flush deadline: reported as unflushed
            self._purged += 1
        else:
            self._delivery_failures += 1
            self._log_failure(failure)

    def _log_failure(self, failure: Failure) -> None:
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
        else:
            self._error_log("Kafka at %s: %s", self._endpoint, error.str())


class _Reports:
    """The delivery report callback of one ``Outgoing``'s messages, called on the poll thread and
    (with ``delivery.report.only.error``) for failures only.

    A failed message's report lacks its timestamp, so the original is looked up here: one
    object per ``Outgoing`` rather than a callback object per message.
    """

    __slots__ = ("_index", "_messages", "_publisher")

    def __init__(self, publisher: Publisher, messages: list[Message]) -> None:
        self._publisher = publisher
        self._messages = messages
        self._index: dict[tuple[str | None, object, object], Message] | None = None

    def __call__(
        self, error: confluent_kafka.KafkaError | None, report: confluent_kafka.Message
    ) -> None:
        if error is None:
            return
        if self._index is None:
            self._index = {(m[0], m[1] or None, m[2] or None): m for m in self._messages}
        message = self._index[report.topic(), report.key() or None, report.value() or None]
        self._publisher._undelivered(message, error)


def _bucket(ns: int) -> int:
    ms = ns / 1e6
    return 0 if ms <= 1 else min(math.ceil(4 * math.log2(ms)), len(LATENCY_BUCKETS_MS) - 1)


class _RateLimitedLog:
    """Logs the first warning at once, then at most one per ``interval`` seconds, saying how
    many were left out. Safe to call from any thread."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._next = 0.0
        self._skipped = 0

    def __call__(self, fmt: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._skipped += 1
                return
            skipped, self._skipped = self._skipped, 0
            self._next = now + self._interval
        if skipped:
            fmt += f" (and {skipped} more since the last report)"
        logger.warning(fmt, *args)
