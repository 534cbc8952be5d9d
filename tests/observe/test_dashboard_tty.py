"""The dashboard end to end: a real replay under a pseudo-terminal (tmux), its screen read back."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ..helpers.paths import SAMPLE

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


def tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def wait_for_screen(session: str, *needles: str, timeout: float = 60.0) -> str:
    """Poll the pane until every needle is on screen; fail with the last screen otherwise."""
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", session)
        if all(n in screen for n in needles):
            return screen
        time.sleep(0.2)
    pytest.fail(f"never saw {needles} on screen:\n{screen}")


def test_replay_under_a_terminal_shows_the_dashboard_then_the_summary(tmp_path: Path) -> None:
    session = f"ft-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit-status"
    stdout = tmp_path / "stdout"
    command = (
        f"{sys.executable} -m finazon_trio replay {SAMPLE} --speed 10 > {stdout}; "
        f"echo $? > {done}; sleep 600"
    )
    tmux("new-session", "-d", "-s", session, "-x", "130", "-y", "45", command)
    try:
        screen = wait_for_screen(session, "REPLAY", "Symbol", "replaying", "MSFT")
        assert "sample.jsonl" in screen
        assert "Kafka (embedded)" in screen
        assert "lines" in screen
        assert "/ 1,205" in screen
        for ticker in ("AAPL", "AMZN", "GOOGL", "MSFT", "TSLA"):
            assert ticker in screen
        final = wait_for_screen(session, "finazon-trio summary", timeout=120)
        assert "delivered" in final
        assert "109,200" in final
        deadline = time.monotonic() + 60
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done.read_text().strip() == "0"
        assert stdout.read_text() == ""  # the dashboard leaves stdout alone
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, timeout=30)
