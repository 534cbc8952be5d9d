"""Redaction: the API key never reaches a log, a recording, a metric or the dashboard."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator

REDACTED = "***"
_APIKEY = re.compile(r"(apikey=)[^&\s\"']*", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every ``apikey=...`` value and every literal secret replaced by ``***``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    if "apikey=" in text.lower():  # cheap test first: almost no frame has one
        text = _APIKEY.sub(r"\g<1>" + REDACTED, text)
    return text


class _RedactFilter(logging.Filter):
    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message or "apikey=" in message:
            record.msg, record.args = redact(message, (self.secret,)), ()
        return True


@contextlib.contextmanager
def redacted_log(name: str, secret: str) -> Iterator[None]:
    """While the block runs, redact ``secret`` from what logger ``name`` logs."""
    log, redacting = logging.getLogger(name), _RedactFilter(secret)
    log.addFilter(redacting)
    try:
        yield
    finally:
        log.removeFilter(redacting)
