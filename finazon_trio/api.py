"""The library API: the original module's class, running the trio pipeline."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import trio

from finazon_trio.errors import ConfigurationError
from finazon_trio.observe.metrics import Metrics
from finazon_trio.pipeline import RunResult, Source, run_pipeline
from finazon_trio.recording import header_from_settings, read_header, replay_settings
from finazon_trio.settings import (
    DEFAULT_DATASET,
    DEFAULT_PRICE_TICKS_TOPIC,
    DEFAULT_URL,
    DEFAULT_VOLUME_STREAM_TOPIC,
    BackfillSettings,
    KafkaSettings,
    LiveSettings,
    Output,
    Settings,
    Subscription,
)
from finazon_trio.source.live import live_source
from finazon_trio.source.replay import replay_source


class FinazonMarketDataProducer:
    """Stream Finazon bars for ``ticker_symbols`` into two Kafka topics.

    ``run()`` blocks until Ctrl-C/SIGTERM like the original module; ``await run_async()`` runs
    inside a caller's trio nursery (cancel it to stop: Kafka is still flushed, within
    ``flush_timeout``). ``kafka_endpoint=None`` starts the embedded broker. The API key comes
    from ``api_key`` or the ``FINAZON_API_KEY`` environment variable.
    """

    def __init__(
        self,
        price_ticks_topic: str = DEFAULT_PRICE_TICKS_TOPIC,
        volume_stream_topic: str = DEFAULT_VOLUME_STREAM_TOPIC,
        ticker_symbols: Iterable[str] = (),
        data_source: str = DEFAULT_DATASET,
        kafka_endpoint: str | None = None,
        *,
        api_key: str | None = None,
        url: str = DEFAULT_URL,
        kafka_config: Mapping[str, str] | None = None,
        spool_dir: Path | None = None,
        failed_path: Path | None = None,
        spool_sync: bool = False,
        record: Path | None = None,
        backfill: bool = True,
        **output: object,
    ) -> None:
        """``output`` takes the fields of :class:`Output` (points, path, volume_format...);
        ``backfill`` fills what disconnects miss from the REST API (README, "Gaps and
        backfill")."""
        try:
            self.settings = Settings(
                subscription=Subscription(dataset=data_source, tickers=tuple(ticker_symbols)),
                output=Output(
                    price_ticks_topic=price_ticks_topic,
                    volume_stream_topic=volume_stream_topic,
                    **output,  # type: ignore[arg-type]
                ),
                kafka=KafkaSettings(
                    endpoint=kafka_endpoint,
                    config=tuple((kafka_config or {}).items()),
                    spool_dir=spool_dir,
                    failed_path=failed_path,
                    spool_sync=spool_sync,
                ),
                live=LiveSettings(
                    url=url, api_key=api_key or os.environ.get("FINAZON_API_KEY", "")
                ),
                backfill=BackfillSettings(enabled=backfill),
                record=record,
                dashboard=False,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(str(exc)) from exc
        self.metrics = Metrics(mode="live")

    def run(self) -> RunResult:
        """Stream live until SIGINT or SIGTERM, then flush and return."""
        return trio.run(functools.partial(self.run_async, handle_signals=True))

    async def run_async(self, *, handle_signals: bool = False) -> RunResult:
        """Stream live inside the caller's trio run."""
        if not self.settings.subscription.tickers:
            raise ConfigurationError("ticker_symbols is empty")
        if not self.settings.live.api_key:
            raise ConfigurationError("no API key: pass api_key= or set FINAZON_API_KEY")
        source: Source = functools.partial(live_source, self.settings, metrics=self.metrics.source)
        header = header_from_settings(self.settings, self.settings.live.url)
        return await run_pipeline(
            self.settings, source, self.metrics, header=header, handle_signals=handle_signals
        )

    def replay(self, path: Path, speed: float | None = None) -> RunResult:
        """Publish a recording through the same pipeline; blocks until all is delivered."""
        return trio.run(functools.partial(self.replay_async, path, speed, handle_signals=True))

    async def replay_async(
        self, path: Path, speed: float | None = None, *, handle_signals: bool = False
    ) -> RunResult:
        """Publish a recording inside the caller's trio run."""
        header = read_header(Path(path))
        settings = replay_settings(self.settings, header)
        source: Source = functools.partial(
            replay_source, Path(path), metrics=self.metrics.source, speed=speed
        )
        self.metrics.mode, self.metrics.origin = "replay", str(path)
        return await run_pipeline(settings, source, self.metrics, handle_signals=handle_signals)
