"""The REST client that fetches what a disconnect missed (live mode): httpx on trio.

The transform decides what is missing (:mod:`finazon_trio.transform.backfill`) and calls
:meth:`RestClient.submit`; each request runs as a task of the client's own nursery and ends as
one :class:`~finazon_trio.events.RestResult` sent into the *source* channel, before the
recorder, so that a recording keeps it and a replay hands the transform the same answer at the
same place, without a key or a network.

One request per symbol per gap (pages aside): ``GET {rest_url}/{publisher}/{dataset}/time_series``
with ``ticker``, ``interval=1m``, ``start_at``, ``end_at``, ``order=asc``, ``page_size`` (up to
1000) and ``page``, following pages while they come back full. The key travels only in the
``Authorization: apikey …`` header: never in the URL (httpx logs URLs at DEBUG), never recorded.
Calls share a budget of ``calls_per_minute`` (a sliding minute); a 429 is retried after an
exponential backoff with jitter (``Retry-After`` when given). ``--backfill-timeout`` bounds the
whole: a request still waiting then ends with ``error="rate_limited"`` (waiting for the budget
or after a 429) or ``"timeout"`` (during a call), and the transform reports a gap.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import httpx
import orjson
import trio

from finazon_trio.events import BackfillRequest, HttpExchange, RestResult, SourceEvent
from finazon_trio.observe.metrics import SourceMetrics
from finazon_trio.redaction import redacted_log
from finazon_trio.settings import BackfillSettings, Subscription
from finazon_trio.source.backoff import RateLimiter
from finazon_trio.transform.backfill import MAX_HISTORY_BARS, RATE_LIMITED, TIMEOUT

logger = logging.getLogger(__name__)

#: Bars asked for per page: Finazon's maximum.
PAGE_SIZE = MAX_HISTORY_BARS
#: Pages followed at most for one request (a range is at most MAX_HISTORY_BARS bars).
MAX_PAGES = 10
#: First delay after a 429 (seconds), doubled each time, capped, with full jitter.
FIRST_429_DELAY = 0.5
MAX_429_DELAY = 10.0
#: Loggers that could show a request (httpx logs URLs, httpcore request lines).
HTTP_LOGGERS = ("httpx", "httpcore")


class RestClient:
    """Backfill requests, run concurrently within one call budget. Start :meth:`run` with
    ``nursery.start``; :meth:`submit` from the transform task."""

    def __init__(
        self,
        settings: BackfillSettings,
        api_key: str,
        subscription: Subscription,
        metrics: SourceMetrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._key = api_key
        self._path = f"/{subscription.provider}/{subscription.dataset}/time_series"
        self._metrics = metrics
        self._transport = transport
        self._jitter = jitter
        self._budget = RateLimiter(settings.calls_per_minute, 60.0)
        #: Set once the last submitted request has had its first turn at the budget: requests
        #: take the budget in the order they were submitted (new tasks start in any order).
        self._last_turn = trio.Event()
        self._last_turn.set()
        self._nursery: trio.Nursery | None = None
        self._send: trio.MemorySendChannel[SourceEvent] | None = None
        self._client: httpx.AsyncClient | None = None

    async def run(
        self,
        send: trio.MemorySendChannel[SourceEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve :meth:`submit` until cancelled; ``send`` (a clone of the source channel) is
        closed on exit. Cancellation abandons the requests in flight: the transform reports
        them as ``interrupted`` gaps when its input ends."""
        base = self._settings.rest_url.rstrip("/")
        headers = {"Authorization": f"apikey {self._key}", "Accept": "application/json"}
        with redacted_log(HTTP_LOGGERS[0], self._key), redacted_log(HTTP_LOGGERS[1], self._key):
            async with (
                send,
                httpx.AsyncClient(
                    base_url=base, headers=headers, timeout=None, transport=self._transport
                ) as client,
                trio.open_nursery() as nursery,
            ):
                self._client, self._send, self._nursery = client, send, nursery
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self._nursery = None

    def submit(self, request: BackfillRequest) -> None:
        """Start fetching ``request`` (never blocks); ignored once the client has stopped."""
        if self._nursery is not None:
            previous, self._last_turn = self._last_turn, trio.Event()
            self._nursery.start_soon(self._backfill, request, previous, self._last_turn)

    async def _backfill(
        self, request: BackfillRequest, previous: trio.Event, turn: trio.Event
    ) -> None:
        exchanges: list[HttpExchange] = []
        waiting = [True]  # for the budget or after a 429, rather than in a call
        error = ""
        with trio.move_on_after(self._settings.timeout) as scope:
            try:
                await previous.wait()
                await self._fetch(request, exchanges, waiting, turn)
            finally:
                turn.set()
        if scope.cancelled_caught:
            error = RATE_LIMITED if waiting[0] else TIMEOUT
            logger.warning(
                "backfill of %s %d-%d: no answer within %g s (%s)",
                request.symbol,
                request.first,
                request.last,
                self._settings.timeout,
                error,
            )
        assert self._send is not None
        result = RestResult(
            time.time_ns(), request.backfill, request.symbol, tuple(exchanges), error
        )
        await self._send.send(result)

    async def _fetch(
        self,
        request: BackfillRequest,
        exchanges: list[HttpExchange],
        waiting: list[bool],
        turn: trio.Event,
    ) -> None:
        size = PAGE_SIZE  # one page covers any range asked (at most MAX_HISTORY_BARS)
        for page in range(MAX_PAGES):
            params = {
                "ticker": request.symbol,
                "interval": "1m",
                "start_at": str(request.first),
                "end_at": str(request.last),
                "order": "asc",
                "page_size": str(size),
                "page": str(page),
            }
            exchange = await self._call(params, exchanges, waiting, turn)
            if exchange.status != 200 or _count(exchange.body) < size:
                return

    async def _call(
        self,
        params: dict[str, str],
        exchanges: list[HttpExchange],
        waiting: list[bool],
        turn: trio.Event,
    ) -> HttpExchange:
        """One call, retried after each 429 (until the caller's timeout)."""
        assert self._client is not None
        for attempt in range(64):
            waiting[0] = True
            now = trio.current_time()
            while (at := self._budget.next_allowed(now)) > now:
                await trio.sleep_until(at)
                now = trio.current_time()
            self._budget.record(now)
            turn.set()
            waiting[0] = False
            t_ns = time.time_ns()
            self._metrics.rest_calls += 1
            try:
                response = await self._client.get(self._path, params=params)
            except trio.Cancelled:  # the timeout, mid-call: keep the request, re-raise
                exchanges.append(HttpExchange(t_ns, self._path, params, error=TIMEOUT))
                raise
            except Exception as exc:  # httpx.HTTPError, or anything odd: a gap, not a crash
                exchange = HttpExchange(t_ns, self._path, params, error=f"network: {exc!r}"[:300])
                exchanges.append(exchange)
                return exchange
            exchange = HttpExchange(t_ns, self._path, params, response.status_code, response.text)
            exchanges.append(exchange)
            if response.status_code != 429:
                return exchange
            self._metrics.rest_rate_limited += 1
            waiting[0] = True
            await trio.sleep(self._retry_delay(response, attempt))
        return exchanges[-1]

    def _retry_delay(self, response: httpx.Response, attempt: int) -> float:
        after = response.headers.get("retry-after", "")
        if after.isdigit():
            return float(after)
        return self._jitter() * min(MAX_429_DELAY, FIRST_429_DELAY * 2.0**attempt)


def _count(body: str) -> int:
    """How many bars a page holds (0 if it is not ``{"data": [...]}``)."""
    try:
        data = orjson.loads(body).get("data")
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return len(data) if isinstance(data, list) else 0
