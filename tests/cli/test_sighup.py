"""The terminal closes under a run that uses the embedded broker: SIGHUP reaches the whole
foreground process group, as a terminal's hangup does. The run stops its source, flushes to
the embedded broker (which must not have died of the same SIGHUP: it runs in a session of its
own) and exits 0; then the broker stops at once, without a warning."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from ..helpers.cli import command
from ..helpers.paths import SAMPLE
from ..helpers.waiting import WAIT_TIMEOUT, wait_until


def test_a_hangup_of_the_whole_process_group_flushes_and_exits_zero(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_ENDPOINT"}
    stderr = tmp_path / "stderr"
    with open(stderr, "w") as err:
        child = subprocess.Popen(
            command("replay", SAMPLE, "--speed", "5", "--no-dashboard"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env | {"COLUMNS": "200"},
            cwd=tmp_path,
            start_new_session=True,  # a process group of its own, like a terminal's job
        )
        try:
            wait_until(lambda: "embedded in-memory broker" in stderr.read_text(), "broker up")
            time.sleep(1.0)  # some frames in flight
            hung_up = time.monotonic()
            os.killpg(child.pid, signal.SIGHUP)
            status = child.wait(WAIT_TIMEOUT)
            took = time.monotonic() - hung_up
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    text = stderr.read_text()
    assert status == 0, text[-3000:]
    assert "SIGHUP: stopping the source, flushing Kafka" in text
    delivered = [line for line in text.splitlines() if "delivered" in line]
    produced = [line for line in text.splitlines() if "produced" in line]
    assert delivered
    assert produced
    assert delivered[-1].split()[-2] == produced[-1].split()[-2] != "0", text[-2000:]
    assert "ignored SIGTERM" not in text
    assert "the embedded Kafka broker exited" not in text
    assert "Traceback" not in text
    assert took < 10, f"{took:.1f} s from the hangup to the exit"
