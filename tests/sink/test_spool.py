"""The spool stage on its own: the test plays the transform (sending) and the publisher
(receiving, or not), with real files in a temporary directory."""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

from finazon_trio.events import Message, Outgoing
from finazon_trio.observe.metrics import PublisherMetrics
from finazon_trio.sink import spool as spool_module
from finazon_trio.sink.failed import message_files, read_messages
from finazon_trio.sink.spool import Spool

from ..helpers import waiting

#: What the publisher's channel holds in these tests.
BUFFER = 4
#: Real seconds a step may take.
STEP = 30.0


def outgoings(count: int, per: int = 10, start: int = 0) -> list[Outgoing]:
    """``count`` batches of ``per`` messages, all different, some with binary parts."""
    out = []
    for n in range(start, start + count):
        key = b"K%d" % (n % 7)
        messages: list[Message] = [
            ("ticks", key, b'{"n":%d,"i":%d}' % (n, i), 1_731_080_000_000 + n, None)
            for i in range(per - 1)
        ]
        messages.append(("volume", key, b"\xff\x00%d" % n, 1_731_080_000_000 + n, [("h", b"\x80")]))
        out.append(Outgoing(t_ns=10**18 + n, messages=messages))
    return out


def flat(batches: list[Outgoing]) -> list[Message]:
    return [m for o in batches for m in o.messages]


@attrs.define
class Harness:
    spool: Spool
    metrics: PublisherMetrics
    send: trio.MemorySendChannel[Outgoing]
    receive: trio.MemoryReceiveChannel[Outgoing]
    directory: Path
    cancel_scope: trio.CancelScope

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("segment-*.jsonl"))

    async def take(self, count: int) -> list[Outgoing]:
        with trio.fail_after(STEP):
            return [await self.receive.receive() for _ in range(count)]

    async def take_all(self) -> list[Outgoing]:
        with trio.fail_after(STEP):
            return [o async for o in self.receive]


@asynccontextmanager
async def running(tmp_path: Path, *, opened: bool = True) -> AsyncIterator[Harness]:
    """A spool between the test's two channel ends; the block's end waits for it to finish."""
    metrics = PublisherMetrics()
    directory = tmp_path / "spool" / "live-run"
    spool = Spool(directory, metrics)
    send, spool_in = trio.open_memory_channel[Outgoing](0)
    spool_out, receive = trio.open_memory_channel[Outgoing](BUFFER)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(spool.run, spool_in, spool_out)
        if opened:
            spool.open()
        yield Harness(spool, metrics, send, receive, directory, nursery.cancel_scope)


#: Waits for a condition on the spool's metrics or files (checked often: they change fast).
until = functools.partial(waiting.until, timeout=STEP, poll=0.005)


async def test_passes_straight_through_while_the_publisher_keeps_up(tmp_path: Path) -> None:
    sent = outgoings(500)
    got: list[Outgoing] = []
    async with running(tmp_path) as h:

        async def publisher() -> None:
            got.extend(await h.take_all())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher)
            async with h.send:
                for outgoing in sent:
                    await h.send.send(outgoing)
    assert got == sent
    assert not h.directory.exists()  # nothing touched the disk
    assert h.metrics.backlog == h.metrics.backlog_bytes == 0


async def test_a_stalled_publisher_makes_it_spool_to_disk_then_drain_in_order(
    tmp_path: Path,
) -> None:
    sent = outgoings(3000)
    async with running(tmp_path) as h:
        async with h.send:
            for outgoing in sent:  # nobody receives: the publisher is stuck
                await h.send.send(outgoing)
            total = len(flat(sent)) - BUFFER * 10  # all but what its channel holds
            await until(lambda: h.metrics.backlog == total, "everything else spooled")
            await until(lambda: h.metrics.backlog_bytes > 0, "on disk")
            assert h.segments()
            assert h.metrics.spool_dir == str(h.directory)
        got = await h.take_all()
    assert got == sent
    assert h.metrics.spooled == total
    assert h.metrics.backlog == h.metrics.backlog_bytes == 0
    assert not h.directory.exists()  # drained: the run's directory is gone


async def test_before_kafka_answers_everything_waits_then_goes_in_order(tmp_path: Path) -> None:
    sent = outgoings(1000)
    async with running(tmp_path, opened=False) as h:
        async with h.send:
            for outgoing in sent:
                await h.send.send(outgoing)
            await until(lambda: h.metrics.backlog == len(flat(sent)), "all held")
            assert h.receive.statistics().current_buffer_used == 0  # none handed over
            h.spool.open()
        got = await h.take_all()
    assert got == sent


async def test_segments_rotate_and_go_once_drained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 20_000)
    # Many small writes (a segment rotates between writes): 64 to 256 batches of 10 each.
    monkeypatch.setattr(spool_module, "WRITE_BATCH", 640)
    monkeypatch.setattr(spool_module, "MAX_PENDING", 2560)
    sent = outgoings(2000)
    async with running(tmp_path) as h:
        async with h.send:
            for outgoing in sent:
                await h.send.send(outgoing)
            await until(lambda: h.metrics.backlog_bytes > 1_000_000, "a megabyte spooled")
            before = h.segments()
            assert len(before) >= 5
            got = await h.take(1000)  # the first half: its segments can go
            await until(lambda: not before[0].exists(), "drained segments deleted")
            assert before[-1].exists()
        got += await h.take_all()
    assert got == sent
    assert not h.directory.exists()


async def test_order_holds_whatever_the_publisher_does(tmp_path: Path) -> None:
    """The publisher stalls and resumes at random while batches keep coming."""
    rng = random.Random(7)
    sent = outgoings(3000, per=3)
    got: list[Outgoing] = []
    async with running(tmp_path) as h:

        async def publisher() -> None:
            while True:
                if rng.random() < 0.005:
                    await trio.sleep(rng.random() * 0.3)  # a stall: the spool takes over
                try:
                    got.append(await h.receive.receive())
                except trio.EndOfChannel:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher)
            async with h.send:
                for i, outgoing in enumerate(sent):
                    await h.send.send(outgoing)
                    if i % 100 == 0:
                        await trio.sleep(0.01)
    assert got == sent
    assert h.metrics.spool_dir, "the spool never used the disk: the test proved nothing"


async def test_giving_up_keeps_exactly_what_was_not_handed_over(tmp_path: Path) -> None:
    sent = outgoings(2000)
    async with running(tmp_path) as h:
        async with h.send:
            for outgoing in sent:
                await h.send.send(outgoing)
            taken = await h.take(700)
        await until(lambda: h.metrics.backlog < len(flat(sent[700:])), "draining")
        h.spool.give_up()  # the shutdown deadline
        in_channel = await h.take_all()  # handed over, not yet taken
    left = h.metrics.backlog
    assert left > 0
    assert h.segments()
    kept = [m for o in read_messages(message_files([h.directory]), []) for m in o.messages]
    assert len(kept) == left
    # Taken, then handed over, then kept on disk: the whole, in order, nothing twice.
    assert flat(taken) + flat(in_channel) + kept == flat(sent)


async def test_cancelling_it_writes_what_it_holds_in_memory(tmp_path: Path) -> None:
    sent = outgoings(10)  # fewer than a write batch: they wait in memory
    async with running(tmp_path, opened=False) as h:
        async with h.send:
            for outgoing in sent:
                await h.send.send(outgoing)
        assert not h.segments()
        h.cancel_scope.cancel()  # a second Ctrl-C
    kept = [m for o in read_messages(message_files([h.directory]), []) for m in o.messages]
    assert kept == flat(sent)
