"""The worker's consume-transform-produce loop: exactly once, in Kafka transactions.

A plain synchronous loop on one dedicated thread (librdkafka's calls block, and the rebalance
callbacks run inside ``consume`` on this thread): consume frames records, expand each with the
same :func:`~finazon_trio.transform.expand.expand` as the single-process pipeline, produce the
messages in the open transaction, and every ``commit_interval`` add the consumed positions to
it (``send_offsets_to_transaction``) and commit. The output of a frame and the offset past it
become visible to ``read_committed`` consumers together, or not at all.

- Partitions revoked (cooperative rebalance, or leaving): the open transaction is committed
  first, so the next owner starts exactly where this one stopped.
- Partitions lost (the group moved on without us): the open transaction is aborted and the
  rest of the assignment rewound to the committed offsets.
- An abortable error: abort, rewind to the committed offsets, go on.
- A fatal error (fenced by a worker with the same ``transactional.id`` or
  ``group.instance.id``, or any other fatal error): :class:`WorkerFenced` /
  :class:`~finazon_trio.errors.KafkaError`, one line; nothing of the open transaction is
  visible.

:meth:`ExpandLoop.run` returns when ``stop`` is set: the open transaction committed (or, if
that fails, aborted), the consumer closed (leaving the group unless a static member).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import confluent_kafka
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from finazon_trio.errors import ConfigurationError, KafkaError
from finazon_trio.observe.metrics import latency_bucket
from finazon_trio.observe.ratelog import RateLimitedLog
from finazon_trio.settings import Subscription
from finazon_trio.sink.admin import librdkafka_logger, reason
from finazon_trio.transform.expand import expand, origin_headers
from finazon_trio.transform.frames import Reject
from finazon_trio.transform.record import decode
from finazon_trio.worker.clients import FENCED, REFUSED, WorkerFenced, client_configs
from finazon_trio.worker.config import WorkerSettings
from finazon_trio.worker.metrics import WorkerMetrics, WorkerState

logger = logging.getLogger(__name__)

#: Records taken per ``consume`` call, and how long it waits for the first one (also how soon
#: the loop sees ``stop`` and a due commit).
BATCH: Final = 500
POLL_TIMEOUT: Final = 0.05
#: Seconds a transactional call (init, send offsets, commit, abort) may take; a retriable
#: timeout is retried.
TXN_TIMEOUT: Final = 10.0
#: A call that has not returned after this long is stuck inside librdkafka (it can wait for a
#: group coordinator that went away with a restarted broker, ignoring its timeout): the worker
#: ends with an error, and its restart (which fences the stuck one) recovers.
STUCK_AFTER: Final = 3 * TXN_TIMEOUT
_SUBSCRIPTION: Final = Subscription()  # never consulted: records carry every text field


class ExpandLoop:
    """One worker's loop; :meth:`run` on a dedicated thread, :attr:`stop` set from anywhere."""

    def __init__(self, settings: WorkerSettings, bootstrap: str, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stop = threading.Event()
        self._output = settings.output
        self._fatal: confluent_kafka.KafkaError | None = None
        self._in_txn = False
        self._txn_started = 0.0
        self._rewind_pending = False
        #: The transactional call under way and when it began (read by the watchdog).
        self.in_call: tuple[str, float] | None = None
        self._reject_log = RateLimitedLog(logger, 10.0, first=5)
        consumer_config, producer_config = client_configs(settings, bootstrap)
        callbacks = {"error_cb": self._on_error, "logger": librdkafka_logger}
        try:
            self._producer = Producer({**producer_config, **callbacks})
            self._consumer = Consumer({**consumer_config, **callbacks, "stats_cb": self._on_stats})
        except KafkaException as exc:
            raise ConfigurationError(f"invalid Kafka setting: {reason(exc)}") from None
        self._produce: Callable[..., None] = self._producer.produce

    def run(self) -> None:
        """Consume, expand and produce exactly once until :attr:`stop` is set; see the module
        docstring. Raises :class:`WorkerFenced` or :class:`KafkaError` on a fatal error."""
        consumer, producer = self._consumer, self._producer
        try:
            self._call(producer.init_transactions, TXN_TIMEOUT)
            consumer.subscribe(
                [self.settings.frames_topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self.metrics.state = WorkerState.RUNNING
            while not self.stop.is_set():
                batch = consumer.consume(BATCH, POLL_TIMEOUT)
                self._check_fatal()
                if self._rewind_pending:
                    self._rewind()  # the batch is re-read from the committed offsets
                    continue
                for message in batch:
                    if not self._process(message):
                        break
                if self._rewind_pending:
                    self._rewind()
                elif self._in_txn and time.monotonic() - self._txn_started >= self._interval:
                    self._commit()
                producer.poll(0)
            self.metrics.state = WorkerState.STOPPING
            if self._in_txn:
                self._commit()
        finally:
            self._close()

    @property
    def _interval(self) -> float:
        return self.settings.commit_interval

    def _close(self) -> None:
        try:
            if self._in_txn and self._fatal is None:
                self._abort()
        except KafkaException as exc:
            logger.warning("could not abort the open transaction: %s", reason(exc))
        try:
            self._consumer.close()  # a dynamic member leaves the group; on_revoke commits nothing
        except (KafkaException, RuntimeError) as exc:
            logger.debug("closing the consumer: %s", exc)
        self.metrics.state = WorkerState.FENCED if self._is_fenced() else WorkerState.STOPPED

    # --- one record -------------------------------------------------------------------------

    def _process(self, message: confluent_kafka.Message) -> bool:
        """Produce the messages of one frames record in the open transaction (beginning one if
        needed); False when the transaction had to be aborted (the rest of the batch is
        dropped: it is read again after the rewind)."""
        error = message.error()
        if error is not None:
            if error.fatal():
                self._fatal = error
                self._check_fatal()
            logger.warning("consuming %s: %s", self.settings.frames_topic, error.str())
            return True
        if not self._in_txn:
            if not self._call(self._producer.begin_transaction):
                return False
            self._in_txn = True
            self._txn_started = time.monotonic()
        decoded = decode(message.value())
        key = message.key() or b""
        if isinstance(decoded, Reject):
            self._bad_record(decoded, key, message)
            return True
        update, e, interval_ms, origin = decoded
        out = expand(update, e, interval_ms, self._output, _SUBSCRIPTION, origin_headers(origin))
        produce = self._produce
        for topic, k, value, timestamp, headers in out:
            while True:
                try:
                    produce(topic, value, k, -1, None, None, timestamp, headers)
                    break
                except BufferError:  # backpressure: serve deliveries, then retry
                    self._producer.poll(0.05)
                except KafkaException as exc:
                    refused = exc.args[0] if exc.args else None
                    if (
                        isinstance(refused, confluent_kafka.KafkaError)
                        and refused.code() in REFUSED
                    ):
                        # Retrying cannot help: stop rather than abort and rewind forever.
                        raise KafkaError(
                            f"Kafka refuses messages for topic {topic}: {refused.str()} (create "
                            "it, or run without --no-create-topics)"
                        ) from None
                    if not self._failed(exc):
                        return False
        self.metrics.records += 1
        self.metrics.messages += len(out)
        return True

    def _bad_record(self, reject: Reject, key: bytes, message: confluent_kafka.Message) -> None:
        metrics = self.metrics
        metrics.bad_records[reject.reason] += 1
        where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
        self._reject_log(
            "skipped a record that is not a frames record at %s: %s",
            where,
            reject.detail[:200],
            key=reject.reason,
        )
        topic = self._output.dead_letter_topic
        if topic is None:
            return
        headers = [
            ("reason", reject.reason.encode()),
            ("detail", reject.detail.encode()),
            ("source", where.encode()),
        ]
        _, timestamp = message.timestamp()
        self._produce(topic, message.value() or b"", key, -1, None, None, timestamp, headers)
        metrics.dead_letters += 1

    # --- transactions -----------------------------------------------------------------------

    def _commit(self) -> None:
        """Add the consumed positions to the open transaction and commit it; abort and rewind
        if Kafka says the transaction must be aborted."""
        consumer = self._consumer
        started = time.monotonic()
        positions = [
            tp
            for tp in consumer.position(consumer.assignment())
            if tp.offset is not None and tp.offset >= 0
        ]
        if positions and not self._call(
            self._producer.send_offsets_to_transaction,
            positions,
            consumer.consumer_group_metadata(),
            TXN_TIMEOUT,
        ):
            return
        if not self._call(self._producer.commit_transaction, TXN_TIMEOUT):
            return
        self._in_txn = False
        elapsed_ms = (time.monotonic() - started) * 1000
        metrics = self.metrics
        metrics.committed += 1
        metrics.last_commit_ms = elapsed_ms
        metrics.commit_latency[latency_bucket(int(elapsed_ms * 1_000_000))] += 1

    def _abort(self) -> None:
        self._in_txn = False
        with self._watched("abort_transaction"):
            self._producer.abort_transaction(TXN_TIMEOUT)
        self.metrics.aborted += 1

    def _call(self, method: Callable[..., object], *args: Any) -> bool:
        """Call a transactional method, retrying retriable errors; False if the transaction
        was aborted instead (a rewind is then pending)."""
        while True:
            try:
                with self._watched(getattr(method, "__name__", "?")):
                    method(*args)
                return True
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, confluent_kafka.KafkaError) and error.retriable():
                    # ``==``: each attribute access makes a new bound method object.
                    if self.stop.is_set() and method == self._producer.init_transactions:
                        raise KafkaError(f"stopped before Kafka answered: {reason(exc)}") from None
                    logger.info("retrying %s: %s", getattr(method, "__name__", method), reason(exc))
                    continue
                return self._failed(exc)

    @contextlib.contextmanager
    def _watched(self, name: str) -> Iterator[None]:
        """Mark a blocking Kafka call in flight, for :meth:`stuck` (librdkafka can wait for
        good inside a transactional call after the broker restarts)."""
        self.in_call = (name, time.monotonic())
        try:
            yield
        finally:
            self.in_call = None

    def stuck(self) -> str | None:
        """What the loop is stuck in, if a transactional call has not returned for
        :data:`STUCK_AFTER` seconds (called from the trio thread)."""
        call = self.in_call
        if call is not None and time.monotonic() - call[1] > STUCK_AFTER:
            return call[0]
        return None

    def _failed(self, exc: KafkaException) -> bool:
        """Handle an error of a producer call: abort and rewind (returns False), or raise."""
        error = exc.args[0] if exc.args else None
        if (
            isinstance(error, confluent_kafka.KafkaError)
            and not error.fatal()
            and (error.txn_requires_abort() or self._in_txn)
        ):
            logger.warning("aborting the transaction: %s", error.str())
            try:
                self._abort()
            except KafkaException as again:
                return self._raise(again)
            self._rewind_pending = True
            return False
        return self._raise(exc)

    def _raise(self, exc: KafkaException) -> bool:
        error = exc.args[0] if exc.args else None
        if isinstance(error, confluent_kafka.KafkaError):
            self._fatal = error
        self._check_fatal()
        raise KafkaError(f"the worker's Kafka client failed: {reason(exc)}") from None

    def _check_fatal(self) -> None:
        error = self._fatal
        if error is None:
            return
        if self._is_fenced():
            raise WorkerFenced(
                f"worker {self.settings.worker_id} was fenced: another worker with the same "
                f"--worker-id took over its transactions ({error.str()}); its open transaction "
                "is aborted, nothing of it is visible"
            )
        raise KafkaError(f"the worker's Kafka client failed for good: {error.str()}")

    def _is_fenced(self) -> bool:
        error = self._fatal
        # A ``_FATAL`` error names the underlying one in its text only.
        return error is not None and (error.code() in FENCED or "fenced" in error.str().lower())

    def _rewind(self) -> None:
        """Seek every assigned partition back to its committed offset (after an abort)."""
        self._rewind_pending = False
        consumer = self._consumer
        assignment = consumer.assignment()
        if not assignment:
            return
        committed = consumer.committed(assignment, timeout=TXN_TIMEOUT)
        for tp in committed:
            offset = tp.offset if tp.offset is not None and tp.offset >= 0 else OFFSET_BEGINNING
            try:
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:  # not fetching yet: it starts at the committed offset
                logger.debug("seek %s[%d]: %s", tp.topic, tp.partition, reason(exc))
        logger.info("rewound %d partitions to their committed offsets", len(committed))

    # --- callbacks (from consume/poll, on this thread) ---------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances += 1
        self._set_assignment(consumer, plus=partitions)
        if partitions:
            logger.info("assigned partitions %s", _numbers(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances += 1
        if self._in_txn:
            self._commit()  # the next owner starts exactly after what this one produced
        self._set_assignment(consumer, minus=partitions)
        if partitions:
            logger.info("revoked partitions %s", _numbers(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances += 1
        if self._in_txn:
            try:
                self._abort()
            except KafkaException as exc:
                self._failed(exc)
        logger.warning(
            "lost partitions %s (the group moved on without this worker): the open "
            "transaction is aborted, they go to another worker",
            _numbers(partitions),
        )
        if self.settings.stable_id:
            self._probe_fencing(consumer, partitions)
        self._rewind_pending = True
        self._set_assignment(consumer, minus=partitions)

    def _probe_fencing(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """A static member that lost its partitions may have been replaced under its id (it
        was frozen or cut off past the session timeout): ask the transaction coordinator, with
        a transaction that is aborted, before rejoining, so that a replaced worker stops here
        instead of taking the partitions back from its successor."""
        try:
            with self._watched("the fencing probe after lost partitions"):
                self._probe(consumer, partitions)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, confluent_kafka.KafkaError) and error.fatal():
                self._fatal = error
                self._check_fatal()
            logger.info("after losing partitions: %s", reason(exc))

    def _probe(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        offsets = [
            tp
            for tp in consumer.committed(partitions, timeout=TXN_TIMEOUT)
            if tp.offset is not None and tp.offset >= 0
        ]
        if not offsets:
            return
        producer = self._producer
        producer.begin_transaction()
        try:
            producer.send_offsets_to_transaction(
                offsets, consumer.consumer_group_metadata(), TXN_TIMEOUT
            )
        finally:
            producer.abort_transaction(TXN_TIMEOUT)

    def _set_assignment(
        self,
        consumer: Consumer,
        plus: list[TopicPartition] = (),  # type: ignore[assignment]
        minus: list[TopicPartition] = (),  # type: ignore[assignment]
    ) -> None:
        current = {tp.partition for tp in consumer.assignment()}
        current |= {tp.partition for tp in plus}
        current -= {tp.partition for tp in minus}
        self.metrics.partitions = tuple(sorted(current))
        self.metrics.lag = {p: self.metrics.lag.get(p, -1) for p in current}

    def _on_stats(self, text: str) -> None:
        stats = json.loads(text)
        topic = stats.get("topics", {}).get(self.settings.frames_topic, {})
        assigned = set(self.metrics.partitions)
        lag = {}
        for key, part in topic.get("partitions", {}).items():
            number = int(key)
            if number in assigned:
                lag[number] = int(part.get("consumer_lag", -1))
        self.metrics.lag = {p: lag.get(p, -1) for p in assigned}

    def _on_error(self, error: confluent_kafka.KafkaError) -> None:
        if error.fatal():
            self._fatal = error
        elif error.code() != confluent_kafka.KafkaError._TRANSPORT:
            logger.warning("Kafka: %s", error.str())


def _numbers(partitions: list[TopicPartition]) -> str:
    return ",".join(str(tp.partition) for tp in sorted(partitions, key=lambda tp: tp.partition))
