"""Stream Finazon real-time market data into Apache Kafka, with trio."""

from finazon_trio.api import FinazonMarketDataProducer
from finazon_trio.settings import KafkaSettings, LiveSettings, Output, Settings, Subscription

__version__ = "0.1.0"

__all__ = [
    "FinazonMarketDataProducer",
    "KafkaSettings",
    "LiveSettings",
    "Output",
    "Settings",
    "Subscription",
    "__version__",
]
