"""``finazon-trio republish``: publish failed-messages files and spool directories again.

The messages go out exactly as they were first meant to (topic, key, value, timestamp,
headers), in file order, through the same publisher as a run: what fails again goes to a new
failed-messages file. Publishing a file twice publishes its messages twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

from finazon_trio.errors import ConfigurationError
from finazon_trio.events import Outgoing
from finazon_trio.observe.metrics import PublisherMetrics
from finazon_trio.settings import KafkaSettings
from finazon_trio.sink.admin import wait_for_kafka
from finazon_trio.sink.failed import FailedFile, feed, message_files
from finazon_trio.sink.publisher import Publisher, producer_config

logger = logging.getLogger(__name__)

#: Batches buffered between the file reader and the publisher.
BUFFER = 16
#: Lines that are not messages, logged one by one; the rest are only counted.
MAX_LOGGED_CORRUPT = 20


@attrs.frozen
class RepublishResult:
    """What became of the messages of the files; ``ok`` means every one was delivered."""

    delivered: int
    failed: int
    unflushed: int
    #: ``path:line: why`` for each line that is not a message (skipped).
    corrupt: list[str]

    @property
    def ok(self) -> bool:
        return not (self.failed or self.unflushed or self.corrupt)


async def republish(
    paths: Sequence[Path], kafka: KafkaSettings, failed: FailedFile, metrics: PublisherMetrics
) -> RepublishResult:
    """Publish the messages of ``paths`` (files, or directories of ``*.jsonl`` segments) in
    order to ``kafka.endpoint``, once it answers (within ``kafka.wait`` seconds, else
    :class:`KafkaError`). Lines that are not messages are skipped and reported."""
    if kafka.endpoint is None:
        raise ConfigurationError(
            "republish needs --kafka-endpoint (or KAFKA_ENDPOINT): the embedded broker would "
            "forget the messages when the command exits"
        )
    files = message_files(paths)
    config = producer_config(kafka, kafka.endpoint)
    metrics.endpoint = kafka.endpoint
    await wait_for_kafka(config, kafka.wait, metrics)
    publisher = Publisher(config, metrics, kafka.flush_timeout, failed)
    corrupt: list[str] = []
    send, receive = trio.open_memory_channel[Outgoing](BUFFER)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run, receive)
        nursery.start_soon(feed, files, send, corrupt)
    for line in corrupt[:MAX_LOGGED_CORRUPT]:
        logger.warning("%s: skipped", line)
    return RepublishResult(metrics.delivered, metrics.failed, publisher.unflushed, corrupt)
