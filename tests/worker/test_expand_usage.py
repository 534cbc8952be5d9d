"""``finazon-trio expand`` refuses what cannot work with one line and exit status 2."""

from __future__ import annotations

import pytest

from ..helpers.cli import run_cli


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "expand needs the cluster the ingest role publishes to"),
        (["--kafka-endpoint", "127.0.0.1:1", "--commit-interval", "0"], "commit interval"),
    ],
)
def test_what_cannot_work_is_one_error_line(args: list[str], error: str) -> None:
    done = run_cli("expand", "--frames-topic", "frames", *args, env={"KAFKA_ENDPOINT": ""})
    assert done.returncode == 2
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert error in line
