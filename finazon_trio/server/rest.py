"""The REST side of ``finazon-trio serve`` (``--rest-port``): Finazon's time-series endpoint.

``GET /{publisher}/{dataset}/time_series`` (under any prefix, e.g. ``/latest/...``) with
``ticker``, ``interval`` (``1m`` only), ``start_at`` / ``end_at`` (Unix seconds, both included),
``order`` (``desc`` by default, or ``asc``), ``page`` (from 0) and ``page_size`` (1 to 1000,
default 10) answers ``{"data": [{"t", "o", "h", "l", "c", "v"}, ...]}``: the closed 1-minute bars
of the same market the WebSocket streams (:meth:`.feeds.Feed.minute_bars`). The key comes in an
``Authorization: apikey KEY`` header or an ``apikey`` query parameter. Errors are
``{"error": {"code": ..., "message": ...}}`` with HTTP 400 ``INVALID_TICKER`` (or
``INVALID_PARAMETER``), 401 ``INVALID_API_KEY``, 404 ``NOT_FOUND``, 429
``API_RATE_LIMIT_EXCEEDED``, 503 ``DATA_UNAVAILABLE``.

Faults (:class:`.config.ServerConfig`): ``rest_reject_auth`` (401), ``rest_rate_limit`` calls
a minute per key (then 429), ``rest_failure_rate`` (503), ``rest_delay`` seconds before each
answer, ``rest_garbage_rate`` (a 200 with a malformed body: wrong shapes, missing fields, bars
outside the range, duplicates, out of order). HTTP is spoken by h11 over trio streams, one
request per connection at a time, keep-alive honoured.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
import orjson
import trio

from finazon_trio.server.config import ServerConfig
from finazon_trio.server.feeds import Feed
from finazon_trio.source.backoff import RateLimiter

logger = logging.getLogger(__name__)

#: The largest ``page_size`` Finazon accepts, and its default.
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 10
#: Seconds a client may take to send a request (and between requests on a kept-alive one).
REQUEST_TIMEOUT = 30.0
RECEIVE_BYTES = 65536
_PATH = re.compile(r"^(?:.*/)?(?P<publisher>[^/]+)/(?P<dataset>[^/]+)/time_series/?$")
_BAR_KEYS = ("t", "o", "h", "l", "c", "v")


@attrs.frozen
class Answer:
    """An HTTP status and its JSON body."""

    status: int
    body: bytes


def error(status: int, code: str, message: str) -> Answer:
    return Answer(status, orjson.dumps({"error": {"code": code, "message": message}}))


def time_series(
    path: str,
    query: dict[str, list[str]],
    bars_of: Callable[[str, str], list[dict[str, Any]] | None],
) -> Answer:
    """The answer to an authorised ``GET path?query`` (pure but for ``bars_of``, which gives
    a ticker's closed bars for a dataset, None for a ticker it does not know)."""
    match = _PATH.match(path)
    if match is None:
        return error(404, "NOT_FOUND", f"no such endpoint: {path[:100]}")
    params = {name: values[-1] for name, values in query.items()}
    ticker = params.get("ticker", "")
    if not ticker:
        return error(400, "INVALID_TICKER", "ticker is required")
    if params.get("interval", "1m") != "1m":
        return error(400, "INVALID_PARAMETER", "interval: only 1m is served")
    try:
        start = int(params.get("start_at", 0))
        end = int(params.get("end_at", 2**62))
        page = int(params.get("page", 0))
        page_size = int(params.get("page_size", DEFAULT_PAGE_SIZE))
    except ValueError:
        return error(400, "INVALID_PARAMETER", "start_at, end_at, page, page_size: integers")
    order = params.get("order", "desc")
    if order not in ("asc", "desc") or page < 0 or not 1 <= page_size <= MAX_PAGE_SIZE:
        return error(400, "INVALID_PARAMETER", "order asc|desc, page >= 0, page_size 1-1000")
    bars = bars_of(ticker, match["dataset"])
    if bars is None:
        return error(400, "INVALID_TICKER", f"Ticker {ticker[:50]} is not supported")
    chosen = [{key: bar[key] for key in _BAR_KEYS} for bar in bars if start <= bar["t"] <= end]
    if order == "desc":
        chosen.reverse()
    return Answer(200, orjson.dumps({"data": chosen[page * page_size : (page + 1) * page_size]}))


def garbage_body(rng: random.Random, good: bytes) -> bytes:
    """A 200 body that is wrong in one of the ways a fuzzer would try."""
    data = orjson.loads(good).get("data", [])
    kind = rng.randrange(7)
    if kind == 0:
        return b"<html>not json</html>"
    if kind == 1:
        return orjson.dumps([1, 2, 3])
    if kind == 2:
        return orjson.dumps({"data": {"t": 1}})
    if kind == 3:  # a field missing
        return orjson.dumps({"data": [{k: v for k, v in b.items() if k != "c"} for b in data]})
    if kind == 4:  # bars outside the range asked for
        return orjson.dumps({"data": [{**b, "t": b["t"] + 86_400 * 400} for b in data]})
    if kind == 5:  # duplicates, out of order
        return orjson.dumps({"data": list(reversed(data + data))})
    return orjson.dumps({"data": [{**b, "h": -1} for b in data]})  # invalid numbers


class RestServer:
    """Answers the time-series endpoint over ``feed``; faults as ``config`` says."""

    def __init__(self, config: ServerConfig, feed: Feed) -> None:
        self.config = config
        self.feed = feed
        self.rng = random.Random(f"finazon-trio-rest:{config.seed}")
        self._limiters: dict[str, RateLimiter] = {}
        #: Requests answered, by HTTP status (tests read it).
        self.statuses: dict[int, int] = {}

    async def handle(self, stream: trio.SocketStream) -> None:
        """One HTTP connection: requests answered in turn until it closes."""
        connection = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _next_request(connection, stream)
                if request is None:
                    return
                answer = await self.answer(request)
                self.statuses[answer.status] = self.statuses.get(answer.status, 0) + 1
                headers = [
                    ("content-type", "application/json"),
                    ("content-length", str(len(answer.body))),
                ]
                data = connection.send(h11.Response(status_code=answer.status, headers=headers))
                data = (data or b"") + (connection.send(h11.Data(data=answer.body)) or b"")
                data += connection.send(h11.EndOfMessage()) or b""
                await stream.send_all(data)
                if connection.our_state is h11.MUST_CLOSE:
                    return
                connection.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            with trio.move_on_after(1, shield=True):
                await stream.aclose()

    async def answer(self, request: h11.Request) -> Answer:
        config = self.config
        if config.rest_delay:
            await trio.sleep(config.rest_delay)
        target = urlsplit(request.target.decode("latin-1"))
        query = parse_qs(target.query)
        key = _key(request, query)
        refused = config.reject_auth or config.rest_reject_auth
        if refused or not key or (config.api_keys and key not in config.api_keys):
            return error(401, "INVALID_API_KEY", "Invalid API key")
        if config.rest_rate_limit is not None:
            limiter = self._limiters.setdefault(key, RateLimiter(config.rest_rate_limit, 60.0))
            now = trio.current_time()
            if limiter.next_allowed(now) > now:
                return error(
                    429,
                    "API_RATE_LIMIT_EXCEEDED",
                    "You have exceeded the allowed number of API calls within the minute",
                )
            limiter.record(now)
        if config.rest_failure_rate and self.rng.random() < config.rest_failure_rate:
            return error(503, "DATA_UNAVAILABLE", "Data is temporarily unavailable")
        answer = time_series(target.path, query, self._bars_of)
        if answer.status == 200 and self.rng.random() < config.rest_garbage_rate:
            return Answer(200, garbage_body(self.rng, answer.body))
        return answer

    def _bars_of(self, ticker: str, dataset: str) -> list[dict[str, Any]] | None:
        if ticker in self.config.unknown_tickers or not self.feed.knows(ticker):
            return None
        return self.feed.minute_bars(ticker, dataset)


def _key(request: h11.Request, query: dict[str, list[str]]) -> str:
    for name, value in request.headers:
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            if scheme.lower() == "apikey":
                return key.strip()
    return query.get("apikey", [""])[-1]


async def _next_request(
    connection: h11.Connection, stream: trio.SocketStream
) -> h11.Request | None:
    """The next request's head, its body read and ignored; None when the client is done."""
    request: h11.Request | None = None
    with trio.move_on_after(REQUEST_TIMEOUT):
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(RECEIVE_BYTES)
                connection.receive_data(data)
                if not data and connection.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
    return None


async def serve_rest(
    config: ServerConfig,
    server: RestServer,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``port`` (0: a free one) until cancelled; ``task_status`` gets the port."""
    listeners = await trio.open_tcp_listeners(port, host=config.host)
    real: int = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server.handle, listeners)
        logger.info("Finazon-compatible REST API on http://%s:%d", config.host, real)
        task_status.started(real)
