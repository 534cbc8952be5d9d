"""Typed errors: each one names a cause a user can act on."""


class FinazonTrioError(Exception):
    """Base of the errors this tool raises on purpose; the CLI prints them without a traceback."""


class ConfigurationError(FinazonTrioError):
    """A setting is missing or wrong (API key, recording path, Kafka options...)."""


class AuthenticationError(FinazonTrioError):
    """Finazon refused the API key. Final: retrying will not help."""


class KafkaError(FinazonTrioError):
    """Kafka cannot be reached or refused what was sent."""


class RecordingError(FinazonTrioError):
    """A recording cannot be read or written."""
