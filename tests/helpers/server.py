"""The project's Finazon-compatible server, run inside the test over real loopback sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from finazon_trio.server.app import serve
from finazon_trio.server.config import ServerConfig
from finazon_trio.server.session import ServerLog

#: Where the server's market starts (a Unix second), unless a test says otherwise.
T0 = 1_731_080_000


@asynccontextmanager
async def server(**options: Any) -> AsyncIterator[tuple[int, ServerLog]]:
    """``serve`` on a free port with ``ServerConfig(**options)`` while the block runs; yields
    the port and the server's log of what each client sent and received."""
    log = ServerLog()
    options.setdefault("start_time", T0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, ServerConfig(port=0, **options), log)
        yield port, log
        nursery.cancel_scope.cancel()
