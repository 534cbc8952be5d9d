"""A live run killed (SIGKILL) while it spools: ``republish`` of what its spool holds delivers
every frame the spool had accepted, exactly once, in order, as the output contract says.

The live run reads ``serve`` (in the test) and points at a Kafka that never answers, so that
everything it receives goes to the spool (``--spool-sync``); it is killed once the spool holds
some frames. What the spool had accepted is what its files hold at that moment (a batch counts
as spooled once written); what was still in memory is lost, as the README says.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import trio

from finazon_trio.events import Message
from finazon_trio.sink.failed import message_files, read_messages

from ..helpers.cli import Cli, run_cli
from ..helpers.contract import assert_topic_matches, bar_frames, by_topic, expected_messages
from ..helpers.kafka import consume_topics, create_topic, free_port, one_broker, unique_topic
from ..helpers.server import server
from ..helpers.waiting import until

KEY = "crash-test-key"
#: Frames the spool must hold before the kill (2 tickers at 20 frames/s each: about 1.5 s).
FRAMES_BEFORE_KILL = 60
#: Messages of one frame with the default 90 points.
PER_FRAME = 91


def spooled(root: Path) -> list[Message]:
    """Every message the spool directories under ``root`` hold, in order (a line still being
    written is left out: it has not counted as spooled)."""
    runs = sorted(root.glob("live-*"))
    if not runs:
        return []
    return [m for batch in read_messages(message_files(runs), []) for m in batch.messages]


@one_broker
async def test_republish_delivers_every_frame_a_killed_runs_spool_accepted_once_in_order(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    root = tmp_path / "spool"
    ticks, volume = unique_topic("crash-ticks"), unique_topic("crash-volume")
    async with server(speed=20.0) as (port, log):
        args = [
            *("live", "--tickers", "AAPL,MSFT", "--url", f"ws://127.0.0.1:{port}/v1"),
            *("--no-dashboard", "--kafka-endpoint", f"127.0.0.1:{free_port()}"),
            *("--kafka-wait", "600", "--spool-dir", str(root), "--spool-sync"),
            *("--price-ticks-topic", ticks, "--volume-stream-topic", volume),
        ]
        with Cli(*args, cwd=tmp_path, env={"FINAZON_API_KEY": KEY}) as cli:
            await until(
                lambda: len(spooled(root)) >= FRAMES_BEFORE_KILL * PER_FRAME,
                f"{FRAMES_BEFORE_KILL} frames spooled",
            )
            cli.send_signal(signal.SIGKILL)
            assert await trio.to_thread.run_sync(cli.finish) == -signal.SIGKILL
        sent = log.sent()
    accepted = spooled(root)
    (run,) = root.glob("live-*")

    for topic in (ticks, volume):
        create_topic(kafka_bootstrap, topic)
    done = await trio.to_thread.run_sync(
        lambda: run_cli("republish", run, "--kafka-endpoint", kafka_bootstrap, cwd=tmp_path)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(accepted)} delivered, 0 failed" in done.stderr

    counts = {t: sum(1 for m in accepted if m[0] == t) for t in (ticks, volume)}
    records = await consume_topics(kafka_bootstrap, counts)
    # Exactly what the spool held, once each, in order...
    for topic in (ticks, volume):
        held = [(m[1], m[2], m[3]) for m in accepted if m[0] == topic]
        assert [(r.key, r.value, r.timestamp) for r in records[topic]] == held
    # ...and that is the contract's messages of the first frames the server sent, every one
    # of them, each whole: event times from the volume events, one per bar frame.
    frames = len(records[volume])
    assert frames >= FRAMES_BEFORE_KILL
    assert len(accepted) == frames * PER_FRAME
    texts = [json.dumps(bar) for bar in bar_frames(sent)][:frames]
    times = [r.timestamp * 1_000_000 for r in records[volume]]
    events = list(zip(times, texts, strict=True))
    expected = expected_messages(events, price_topic=ticks, volume_topic=volume)
    for topic in (ticks, volume):
        assert_topic_matches(records[topic], by_topic(expected, topic))
