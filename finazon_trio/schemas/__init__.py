"""The declared schemas of what the tool publishes: JSON Schema documents shipped in the package.

One file per kind of record, ``NAME.json`` beside this module. Most describe a record's value
(``"x-describes": "value"``); the dead-letter one describes the whole record as
``{"key", "value", "headers"}`` (``"x-describes": "record"``), because its value is a rejected
frame's text, which need not be JSON. :func:`record_document` builds what a schema describes
from a consumed record, :func:`validate` checks it. ``finazon-trio schema NAME`` prints one.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from finazon_trio.errors import FinazonTrioError

#: Every schema the package ships, in the order ``finazon-trio schema`` lists them.
NAMES = ("price-tick", "volume-stream", "volume-stream-raw", "dead-letter", "gap", "frames")


class UnknownSchemaError(FinazonTrioError):
    """No schema has that name."""


@functools.cache
def load(name: str) -> dict[str, Any]:
    """The schema ``name`` (one of :data:`NAMES`) as a JSON object; :class:`UnknownSchemaError`
    otherwise."""
    if name not in NAMES:
        raise UnknownSchemaError(f"no schema named {name!r}; the schemas are: {', '.join(NAMES)}")
    document: dict[str, Any] = json.loads(text(name))
    return document


def text(name: str) -> str:
    """The schema file ``name`` as shipped (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise UnknownSchemaError(f"no schema named {name!r}; the schemas are: {', '.join(NAMES)}")
    return resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")


def describes_record(name: str) -> bool:
    """Whether the schema describes the whole record (``{key, value, headers}``), not a value."""
    return load(name).get("x-describes") == "record"


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = load(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def record_document(
    name: str, key: bytes | None, value: bytes, headers: Iterable[tuple[str, bytes | None]] = ()
) -> Any:
    """What schema ``name`` describes, for a record: its value parsed as JSON, or for a record
    schema the record as ``{"key": ..., "value": ..., "headers": {...}}`` in UTF-8 text.

    Raises ``ValueError`` if a value schema's value is not JSON.
    """
    if not describes_record(name):
        return json.loads(value)
    return {
        "key": (key or b"").decode(),
        "value": value.decode(),
        "headers": {k: (v or b"").decode() for k, v in headers},
    }


def validate(name: str, document: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``document`` fits schema ``name``."""
    _validator(name).validate(document)


def validate_record(
    name: str, key: bytes | None, value: bytes, headers: Iterable[tuple[str, bytes | None]] = ()
) -> None:
    """Raise ``jsonschema.ValidationError`` unless the record fits schema ``name`` (or
    ``ValueError`` if a value schema's value is not JSON)."""
    validate(name, record_document(name, key, value, headers))


def write_broker_registry(directory: Path, topics: Mapping[str, str]) -> Path:
    """Write a schema registry for the embedded broker (Tansu's ``--schema-registry``): for
    each ``topic -> schema name``, ``TOPIC.json`` wrapping the value schema as the ``value``
    property (Tansu checks a record's key and value against the properties of those names; the
    key, plain UTF-8, is not JSON and is left out). Only value schemas can be enforced there."""
    directory.mkdir(parents=True, exist_ok=True)
    for topic, name in topics.items():
        if describes_record(name):
            raise ValueError(f"schema {name!r} describes whole records, not values")
        wrapper = {"type": "object", "properties": {"value": load(name)}}
        (directory / f"{topic}.json").write_text(json.dumps(wrapper, indent=1), encoding="utf-8")
    return directory
