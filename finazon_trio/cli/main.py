"""The ``finazon-trio`` command: live, replay, republish, serve, broker and generate."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from finazon_trio.cli.commands import EXIT_FAILED
from finazon_trio.cli.parser import build_parser
from finazon_trio.errors import ConfigurationError, FinazonTrioError

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    status = EXIT_FAILED
    try:
        status = args.handler(args)
    except* ConfigurationError as group:
        _print_errors(group)
        status = EXIT_USAGE
    except* (FinazonTrioError, ValueError) as group:
        _print_errors(group)
    return status


def _print_errors(group: BaseExceptionGroup[BaseException]) -> None:
    console = Console(stderr=True)
    for exc in _leaves(group):
        # One line however long, and the text as is (an error may quote "[...]" from the user).
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
