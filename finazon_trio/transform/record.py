"""The frames record: what the ingest role publishes for each accepted bar, and what an
expansion worker turns back into the bar's price ticks and volume record.

It carries everything :func:`~.expand.expand` needs, the symbol's state before the frame
included, so that workers hold no per-symbol state: ``expand(*decode(encode(u, e, w)))``
gives exactly the bytes of ``expand(u, e, w)``. The round trip is exact: floats go through
orjson's shortest round-trip text, integers stay integers, and the bar's ``raw`` bytes (for
``--volume-format raw``) are carried as a string. Encoded with the project's converter
(:mod:`finazon_trio.codec`), once per frame (not per tick). The format is versioned (README,
"Scaling out"); a record of another version or anything else is a :class:`~.frames.Reject` with the
reason :data:`BAD_RECORD`, never an exception.
"""

from __future__ import annotations

from typing import Final

import attrs
import orjson

from finazon_trio.codec import DecodeError, structure
from finazon_trio.codec import encode as encode_json
from finazon_trio.settings import Subscription
from finazon_trio.transform.expand import either
from finazon_trio.transform.frames import Bar, Reject
from finazon_trio.transform.state import BarUpdate

#: The version written; a worker accepts this one only.
FRAMES_RECORD_VERSION: Final = 1
#: The reject reason of a record on the frames topic that a worker cannot read.
BAD_RECORD: Final = "bad_frames_record"


@attrs.frozen(slots=True)
class FramesRecord:
    """Version 1 of the frames record (field names as in the JSON, documented in the README)."""

    version: int
    #: Event time (ms since the epoch): the record's Kafka timestamp too.
    e: int
    #: The subscription's update interval ``W`` in ms (a bar's own ``f`` takes precedence).
    interval_ms: int
    #: The bar: Finazon's field names, as validated by the ingest role; ``d p ch f aggr`` are
    #: filled in from the ingest role's subscription when the frame lacks them.
    s: str
    t: int
    o: float
    h: float
    l: float  # noqa: E741 - Finazon's name
    c: float
    v: int | float
    #: The bar as received, for ``--volume-format raw`` (JSON text: the codec writes valid
    #: UTF-8 bytes as a string).
    raw: bytes
    #: The symbol's state before this frame.
    new_bar: bool
    start: float
    volume_delta: int | float
    prior_high: float
    prior_low: float
    d: str | None = None
    p: str | None = None
    ch: str | None = None
    f: str | None = None
    aggr: str | None = None
    f_ms: int | None = None
    #: ``backfill`` for a minute backfilled from REST: the worker's records get the header
    #: ``origin: backfill`` (README, "Gaps and backfill"); absent for live frames.
    origin: str | None = None


def encode(
    update: BarUpdate,
    e: int,
    interval_ms: int,
    subscription: Subscription,
    origin: str | None = None,
) -> bytes:
    """The record of one accepted bar update with event time ``e``. The bar's text fields that
    the frame lacks are filled in from ``subscription`` here, as the volume record would be, so
    that a worker needs no subscription of its own."""
    bar = update.bar
    sub = subscription
    record = FramesRecord(
        FRAMES_RECORD_VERSION,
        e,
        interval_ms,
        bar.symbol,
        bar.bar_time,
        bar.open,
        bar.high,
        bar.low,
        bar.close,
        bar.volume,
        bar.raw,
        update.new_bar,
        update.start,
        update.volume_delta,
        update.prior_high,
        update.prior_low,
        either(bar.data_source, sub.dataset),
        either(bar.provider, sub.provider),
        either(bar.channel, sub.channel),
        either(bar.frequency, sub.frequency),
        either(bar.aggregation, sub.aggregation),
        bar.frequency_ms,
        origin,
    )
    return encode_json(record)


def decode(value: bytes | None) -> tuple[BarUpdate, int, int, str | None] | Reject:
    """``(update, e, interval_ms, origin)`` from a record, or a :data:`BAD_RECORD` reject
    saying why."""
    text = (value or b"").decode(errors="replace")
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        return Reject(BAD_RECORD, f"not JSON: {exc}", text)
    if not isinstance(obj, dict):
        return Reject(BAD_RECORD, "not a JSON object", text)
    version = obj.get("version")
    if version != FRAMES_RECORD_VERSION:
        detail = f"version {version!r}, this worker reads version {FRAMES_RECORD_VERSION}"
        return Reject(BAD_RECORD, detail, text)
    try:
        r = structure(obj, FramesRecord)
    except DecodeError as exc:
        return Reject(BAD_RECORD, str(exc), text)
    bar = Bar(r.s, r.t, r.o, r.h, r.l, r.c, r.v, r.raw, r.d, r.p, r.ch, r.f, r.aggr, r.f_ms)
    update = BarUpdate(bar, r.new_bar, r.start, r.volume_delta, r.prior_high, r.prior_low)
    return update, r.e, r.interval_ms, r.origin
