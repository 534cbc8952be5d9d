"""The ``finazon-trio`` console script in a subprocess: run to its end (:func:`run_cli`), or
driven while it runs (:class:`Cli`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from .waiting import WAIT_TIMEOUT

#: Real seconds a process may take to flush and exit once told to.
EXIT_TIMEOUT = 90.0
#: A summary row: ``│ produced          │ 109,200 │`` (or with ASCII borders).
_ROW = re.compile(r"^\W*(\w[\w ]*?)\s*[│|]\s*([\d,]+)\s*[│|]\s*$")


def command(*args: str | Path) -> list[str]:
    """The command line of ``finazon-trio ARGS``, run by this interpreter."""
    return [sys.executable, "-m", "finazon_trio", *map(str, args)]


def run_cli(
    *args: str | Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """``finazon-trio ARGS`` in a subprocess, run to its end, its output captured. It has this
    process's environment without ``KAFKA_ENDPOINT`` (the embedded broker unless told
    otherwise), wide lines (``COLUMNS=500``, so that messages are not wrapped), then ``env``."""
    environment = {k: v for k, v in os.environ.items() if k != "KAFKA_ENDPOINT"}
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        env=environment | {"COLUMNS": "500"} | (env or {}),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def output_args(bootstrap: str, ticks: str, volumes: str) -> list[str]:
    """The options of a run that publishes to ``bootstrap``'s topics ``ticks`` and ``volumes``,
    without a dashboard, with Prometheus metrics on a free port."""
    return [
        *("--kafka-endpoint", bootstrap, "--no-dashboard", "--metrics-port", "0"),
        *("--price-ticks-topic", ticks, "--volume-stream-topic", volumes),
    ]


class Cli:
    """A ``finazon-trio`` subprocess; a thread collects its stderr line by line.

    It runs in ``cwd``, which is also where it keeps a spool or failed messages. Use it as a
    context manager: on exit, a process still running is killed.
    """

    def __init__(self, *args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> None:
        # Whatever it keeps on disk (spool, failed messages) stays in ``cwd``.
        state = {"XDG_STATE_HOME": str(cwd)}
        environment = {**os.environ, "COLUMNS": "80", **state, **(env or {})}
        self.args = [str(arg) for arg in args]
        self.process = subprocess.Popen(
            command(*self.args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            cwd=cwd,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = WAIT_TIMEOUT) -> re.Match[str]:
        """The first stderr line matching ``pattern``; fails if none comes within ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked = 0
        with self._changed:
            while True:
                for line in self.lines[checked:]:
                    if match := regex.search(line):
                        return match
                checked = len(self.lines)
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    why = "exited" if self._eof else f"ran {timeout:g} s"
                    raise AssertionError(
                        f"{self.args[0]} {why} without logging {pattern!r}:\n{self.tail()}"
                    )
                self._changed.wait(remaining)

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Wait for the exit status; fails (killing the process) after ``timeout`` seconds."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self._reader.join()
            raise AssertionError(f"still running {timeout:g} s later:\n{self.tail()}") from None
        self._reader.join()
        return code

    def tail(self, lines: int = 40) -> str:
        with self._changed:
            return "\n".join(self.lines[-lines:])

    def metrics_port(self) -> int:
        return int(self.wait_for(r"Prometheus metrics at http://[^:]+:(\d+)/metrics")[1])

    def summary(self) -> dict[str, int]:
        """The rows of the end-of-run summary table."""
        rows = {}
        for line in self.stderr.splitlines():
            if match := _ROW.match(line):
                rows[match[1]] = int(match[2].replace(",", ""))
        assert "produced" in rows, f"no summary:\n{self.tail()}"
        return rows

    def __enter__(self) -> Cli:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join()
