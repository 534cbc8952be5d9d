"""Fetch Apache Kafka from Maven Central and run a single-node KRaft broker on loopback.

Used by the test fixtures, the benchmark and the reliability tests (which kill and restart the
broker on the same data directory and port). Standard library only, so it runs before anything
else is installed::

    python scripts/apache_kafka.py fetch              # download the jars once (needs mvn, java)
    python scripts/apache_kafka.py run --port 9092    # a broker until Ctrl-C
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
POM = REPO / "kafka" / "pom.xml"
DEFAULT_LIBS = REPO / ".cache" / "kafka" / "libs"
#: Written into the libs directory once Maven has copied every jar: the pom's hash, so that
#: editing the pom fetches again.
_COMPLETE = ".complete"

DEFAULT_HEAP = "512m"
#: A cold JVM on a busy 2-core machine needs a while; a healthy start takes 5-15 s.
START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
_PROBE_INTERVAL = 0.25

_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={log_dir}
num.partitions=1
# Topics come from the tool's AdminClient; a typo in a topic name must fail, not create one.
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Tests publish records with event times years in the past (recordings): keep them all.
log.retention.ms=-1
# After a SIGKILL the restarted broker must wait for its old session to expire (default 9 s).
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
"""

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.statechange.name = state.change.logger
logger.statechange.level = warn
"""


class KafkaSetupError(RuntimeError):
    """The jars cannot be fetched or the broker does not come up."""


def fetch_jars(dest: Path = DEFAULT_LIBS) -> Path:
    """Copy Kafka's runtime jars from Maven Central into ``dest``, unless they are already there.

    Safe to call from several processes at once: one fetches, the others wait for it.
    """
    if _fetched(dest):
        return dest
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaSetupError("Maven (mvn) is not installed: it fetches Apache Kafka's jars")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.parent / ".fetch.lock"):
        if _fetched(dest):
            return dest
        staging = Path(tempfile.mkdtemp(prefix=".libs-", dir=dest.parent))
        try:
            result = subprocess.run(
                [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                 "-DincludeScope=runtime", f"-DoutputDirectory={staging}"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                output = (result.stdout + result.stderr).strip().splitlines()
                raise KafkaSetupError(
                    f"mvn could not fetch Apache Kafka (exit {result.returncode}):\n"
                    + "\n".join(output[-20:])
                )
            (staging / _COMPLETE).write_text(_pom_hash())
            shutil.rmtree(dest, ignore_errors=True)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def _fetched(dest: Path) -> bool:
    try:
        return (dest / _COMPLETE).read_text() == _pom_hash()
    except OSError:
        return False


def _pom_hash() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ApacheKafka:
    """A single-node KRaft broker (broker and controller in one JVM) on 127.0.0.1.

    The ports are chosen once, so :meth:`restart` (and :meth:`start` after :meth:`kill`) brings
    the broker back on the same address with the same data. Output goes to
    ``data_dir/kafka.log``.
    """

    def __init__(
        self, data_dir: Path, port: int = 0, *, libs: Path = DEFAULT_LIBS, heap: str = DEFAULT_HEAP
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.controller_port = free_port()
        self.libs = libs
        self.heap = heap
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "kafka.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the broker (formatting its storage on the first start) and wait until it
        answers metadata requests. Raises :class:`KafkaSetupError` past ``timeout`` seconds."""
        if self.running:
            raise KafkaSetupError(f"Apache Kafka at {self.bootstrap} is already running")
        java = shutil.which("java")
        if java is None:
            raise KafkaSetupError("Java is not installed: Apache Kafka needs a JRE (17 or later)")
        fetch_jars(self.libs)
        config = self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            self._format(java, config)
        with self.log_file.open("ab") as log:
            log.write(f"\n==== starting on {self.bootstrap} at {time.ctime()} ====\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                [java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                 "-Djava.awt.headless=true", *self._java_args(), "kafka.Kafka", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not _answers_metadata(self.port):
            if self._process.poll() is not None:
                raise KafkaSetupError(
                    f"Apache Kafka exited with code {self._process.returncode} while starting; "
                    f"see {self.log_file}:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise KafkaSetupError(
                    f"Apache Kafka at {self.bootstrap} did not answer within {timeout:.0f} s; "
                    f"see {self.log_file}:\n{self._log_tail()}"
                )
            time.sleep(_PROBE_INTERVAL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut down cleanly (SIGTERM), killing the broker if it takes longer than ``timeout``."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL, like a crash: nothing is flushed, nothing is deregistered."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop (if running) and start again on the same port and data directory."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> ApacheKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _java_args(self) -> list[str]:
        return [
            "-cp", f"{self.libs}/*",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
        ]  # fmt: skip

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        config = self.data_dir / "server.properties"
        config.write_text(
            _SERVER_PROPERTIES.format(
                port=self.port,
                controller_port=self.controller_port,
                log_dir=self.data_dir / "logs",
            )
        )
        return config

    def _format(self, java: str, config: Path) -> None:
        result = subprocess.run(
            [java, "-Xmx256m", *self._java_args(), "kafka.tools.StorageTool", "format",
             "-t", _cluster_id(), "-c", str(config)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise KafkaSetupError(
                f"formatting Kafka storage in {self.data_dir} failed:\n"
                + result.stdout
                + result.stderr
            )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _cluster_id() -> str:
    """A random cluster id as Kafka writes them: a UUID in unpadded URL-safe base64."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):  # would be read as a command-line option
            return cluster_id


def _answers_metadata(port: int) -> bool:
    """True when the broker answers a Metadata request listing at least one (unfenced) broker.

    A bound port is not enough: Kafka accepts connections before it serves requests.
    """
    # Metadata v4, request header v1: all topics (null array), no auto-creation.
    body = struct.pack(">hhih", 3, 4, 1, 5) + b"probe" + struct.pack(">i?", -1, False)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _read_exactly(sock, 4))
            response = _read_exactly(sock, size)
    except (OSError, EOFError):
        return False
    # correlation id, throttle time, then the brokers array's length
    correlation, _throttle, brokers = struct.unpack_from(">iii", response)
    return bool(correlation == 1 and brokers > 0)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download the jars with Maven (once)")
    run = commands.add_parser("run", help="run a broker until interrupted")
    run.add_argument("--port", type=int, default=0, help="client port (default: a free one)")
    run.add_argument("--data-dir", type=Path, help="keep the data here (default: a temporary dir)")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch_jars())
            return 0
        with contextlib.ExitStack() as stack:
            data_dir = args.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            kafka = ApacheKafka(data_dir, args.port)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            with kafka:
                print(f"Apache Kafka is serving on {kafka.bootstrap} (log: {kafka.log_file})")
                with contextlib.suppress(KeyboardInterrupt):
                    while kafka.running:
                        time.sleep(1)
                    print(f"Apache Kafka exited by itself; see {kafka.log_file}", file=sys.stderr)
                    return 1
            return 0
    except KafkaSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
