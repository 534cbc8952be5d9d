"""Talking to the cluster before producing: wait until it answers, create the topics.

Both run librdkafka's blocking admin calls in a worker thread, never on the trio thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Final, TypeAlias

import confluent_kafka
import trio
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from finazon_trio.errors import ConfigurationError, KafkaError
from finazon_trio.observe.metrics import PublisherMetrics

logger = logging.getLogger(__name__)
#: librdkafka's own log lines (connection failures, retries...), at their own levels.
librdkafka_logger = logging.getLogger("finazon_trio.sink.publisher.librdkafka")

Config: TypeAlias = dict[str, str | int | bool]

#: Seconds an admin request (create topics, list topics) may take.
ADMIN_TIMEOUT = 30.0
#: After this long without an answer, :func:`wait_for_kafka` says that it is waiting...
WAIT_NOTICE_AFTER = 2.0
#: ...and then says it again this often, with the time left.
WAIT_LOG_INTERVAL = 15.0
#: Seconds each metadata probe may take while waiting: how soon a broker that comes up is seen,
#: and how soon a cancelled wait lets its thread go.
PROBE_TIMEOUT = 1.0
#: Errors that waiting will not cure: the client's security settings do not match the broker's.
AUTH_ERRORS: Final = frozenset(
    {
        confluent_kafka.KafkaError._AUTHENTICATION,
        confluent_kafka.KafkaError._SSL,
        confluent_kafka.KafkaError.SASL_AUTHENTICATION_FAILED,
    }
)
#: Kafka connection states shown in :attr:`PublisherMetrics.kafka_state`.
CONNECTING, WAITING, UP, DOWN = "connecting", "waiting", "up", "down"


def endpoint_of(config: Config) -> str:
    """The bootstrap servers a configuration points at, for messages."""
    return str(config.get("bootstrap.servers", "?"))


def admin_client(config: Config, **extra: Any) -> AdminClient:
    """An admin client; :class:`ConfigurationError` if librdkafka refuses a setting."""
    try:
        return AdminClient({**config, **extra}, logger=librdkafka_logger)
    except KafkaException as exc:
        raise ConfigurationError(f"invalid Kafka setting: {reason(exc)}") from None


def client_error(exc: KafkaException) -> confluent_kafka.KafkaError | None:
    error = exc.args[0] if exc.args else None
    return error if isinstance(error, confluent_kafka.KafkaError) else None


def reason(exc: KafkaException) -> str:
    """librdkafka's description of the error inside ``exc``."""
    error = client_error(exc)
    return str(exc) if error is None else error.str()


# The timeout bounds the probe inside librdkafka, which trio cannot cancel.
async def wait_for_kafka(
    config: Config,
    timeout: float,  # noqa: ASYNC109
    metrics: PublisherMetrics | None = None,
) -> None:
    """Return once the cluster answers a metadata request.

    Says so in the log (and sets ``metrics.kafka_state`` to ``waiting``) if it does not answer
    at once, and again every :data:`WAIT_LOG_INTERVAL` seconds. Raises :class:`KafkaError`
    naming the endpoint, the last connection error and what to do after ``timeout`` seconds,
    or at once if the broker refuses the client's authentication (waiting would not help).
    Cancelling stops the probe thread within :data:`PROBE_TIMEOUT`.
    """
    endpoint = endpoint_of(config)
    stop = threading.Event()
    if metrics is not None:
        metrics.kafka_state = CONNECTING

    def probe() -> KafkaError | None:
        errors: list[confluent_kafka.KafkaError] = []

        def on_error(error: confluent_kafka.KafkaError) -> None:
            if error.code() != confluent_kafka.KafkaError._ALL_BROKERS_DOWN:
                errors.append(error)

        # Reconnect at least once a second, so a broker that comes up late is seen at once;
        # connection errors are reported here, not logged by librdkafka.
        admin = admin_client(
            config, error_cb=on_error, log_level=0, **{"reconnect.backoff.max.ms": 1000}
        )
        start = time.monotonic()
        next_log = start + WAIT_NOTICE_AFTER
        waited = False
        while not stop.is_set():
            left = start + timeout - time.monotonic()
            try:
                admin.list_topics(timeout=max(0.1, min(PROBE_TIMEOUT, left)))
                if waited:
                    logger.info("Kafka at %s answered", endpoint)
                return None
            except KafkaException as exc:
                failure = reason(exc)
            admin.poll(0)  # serves on_error
            last = errors[-1].str() if errors else failure
            if any(error.code() in AUTH_ERRORS for error in errors):
                return KafkaError(
                    f"Kafka at {endpoint} refused this client's authentication: {last}. Check "
                    "the security settings given with --kafka-config (security.protocol, "
                    "sasl.mechanism, sasl.username, sasl.password, ssl.*)."
                )
            left = start + timeout - time.monotonic()
            if left <= 0:
                return KafkaError(
                    f"Kafka at {endpoint} did not answer within {timeout:g} s: {last}. Check "
                    "that the broker is running and reachable from here and that "
                    "--kafka-endpoint (or KAFKA_ENDPOINT) names it, or wait longer with "
                    "--kafka-wait."
                )
            if time.monotonic() >= next_log:
                if metrics is not None:
                    metrics.kafka_state = WAITING
                waited = True
                logger.warning(
                    "Kafka at %s does not answer yet (%s); waiting %.0f s more",
                    endpoint,
                    last,
                    left,
                )
                next_log = time.monotonic() + WAIT_LOG_INTERVAL
        return None

    try:
        failure = await trio.to_thread.run_sync(probe, abandon_on_cancel=True)
    finally:
        stop.set()
    if failure is not None:
        raise failure
    if metrics is not None:
        metrics.kafka_state = UP


async def ensure_topics(
    config: Config, topics: Sequence[str], partitions: int, replication_factor: int
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are (with a
    warning if their partition count differs). :class:`KafkaError` if any cannot be created.
    Cancelling abandons the admin thread, which ends within :data:`ADMIN_TIMEOUT`."""
    endpoint = endpoint_of(config)
    wanted = list(dict.fromkeys(topics))

    def create() -> list[str]:
        admin = admin_client(config)
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
                error = client_error(exc)
                if error and error.code() == confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                    existing.append(topic)
                else:
                    problems.append(f"{topic}: {reason(exc)}")
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
