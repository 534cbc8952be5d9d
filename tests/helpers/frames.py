"""The bar frame Finazon documents, and frames made from it with fields changed."""

from __future__ import annotations

from typing import Any

import orjson

BAR: dict[str, Any] = {
    "d": "us_stocks_essential",
    "p": "finazon",
    "ch": "bars",
    "f": "1s",
    "aggr": "1m",
    "s": "AAPL",
    "t": 1699540020,
    "o": 220.06,
    "h": 220.13,
    "l": 219.92,
    "c": 219.96,
    "v": 4572,
}
#: A field's value that removes the field.
DROP = object()


def text(**changes: Any) -> str:
    """The documented bar frame with some fields changed (``DROP`` removes one)."""
    obj = {key: value for key, value in {**BAR, **changes}.items() if value is not DROP}
    return orjson.dumps(obj).decode()
