"""Pure helpers for Finazon's WebSocket protocol: client events out, server messages in.

Finazon documents only part of the protocol (see ``docs/finazon-protocol.md``), so
:func:`classify` accepts every variant seen or plausible: acknowledgements with the tickers in
``data`` or at the top, errors that name their ticker in a field or only in the message,
heartbeat replies.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import orjson

from finazon_trio.codec import encode
from finazon_trio.errors import ConfigurationError
from finazon_trio.settings import Subscription

#: Finazon's documented ceiling for one client event message, in bytes.
MAX_EVENT_BYTES = 100_000

_AUTH = re.compile(
    r"api[\s_-]?key|authori[sz]|authenticat|forbidden|access denied"
    r"|permission denied|\b40[13]\b",
    re.IGNORECASE,
)
_ALREADY = re.compile(r"already\s+subscribed", re.IGNORECASE)
_TICKER_WORD = re.compile(r"\btickers?\b\W*([A-Za-z0-9][\w.:/^=-]*)", re.IGNORECASE)
_TOKEN = re.compile(r"[\w.:/^=-]+")
_ERROR_STATUSES = frozenset({"error", "failed", "fail", "failure"})
#: An error naming a subscription parameter and refusing it ("Dataset xyz is not supported").
_SUBSCRIPTION_FIELD = re.compile(r"\b(?:dataset|channel|frequency|aggregation)\b", re.IGNORECASE)
_REFUSAL = re.compile(
    r"not\s+supported|unsupported|unknown|invalid|not\s+available|not\s+allowed|not\s+found"
    r"|does\s+not\s+exist",
    re.IGNORECASE,
)


@attrs.frozen(slots=True)
class Ack:
    """A subscribe or unsubscribe acknowledgement, with the tickers it names (maybe none)."""

    event: str
    tickers: tuple[str, ...]


@attrs.frozen(slots=True)
class TickerError:
    """The server refused one ticker; the others of the request stay subscribed."""

    ticker: str
    message: str


@attrs.frozen(slots=True)
class AuthFailure:
    """The server refused the API key: final."""

    message: str


@attrs.frozen(slots=True)
class SubscriptionRefused:
    """The server refused the subscription itself (dataset, channel, frequency or
    aggregation), for every ticker: final."""

    message: str


@attrs.frozen(slots=True)
class ServerError:
    """An error that names no ticker and no key problem."""

    message: str


@attrs.frozen(slots=True)
class HeartbeatReply:
    """The answer to ``{"event": "heartbeat"}``."""


@attrs.frozen(slots=True)
class Notice:
    """Any other protocol message (e.g. "already subscribed"): logged, nothing to do."""

    message: str


ServerMessage: TypeAlias = (
    Ack | TickerError | AuthFailure | SubscriptionRefused | ServerError | HeartbeatReply | Notice
)


# Client events, as sent (encoded by :mod:`finazon_trio.codec`).


@attrs.frozen(slots=True)
class SubscriptionEvent:
    """``{"event": "subscribe" or "unsubscribe", ...the subscription..., "tickers": [...]}``."""

    event: str
    dataset: str
    channel: str
    frequency: str
    aggregation: str
    tickers: tuple[str, ...] = ()


@attrs.frozen(slots=True)
class HeartbeatEvent:
    """``{"event": "heartbeat"}``: the server answers it (:class:`HeartbeatReply`)."""

    event: str = "heartbeat"


#: The heartbeat's text (it never changes).
HEARTBEAT = encode(HeartbeatEvent()).decode()


def is_auth_failure(text: str) -> bool:
    """Whether an error text speaks of the API key, authorization or a forbidden request."""
    return _AUTH.search(text) is not None


def classify(text: str, tickers: Collection[str] = ()) -> ServerMessage | None:
    """What a received text frame means to the connection; None for anything that is not a
    protocol message (bars, and garbage: the transform judges those).

    ``tickers`` (the connection's) helps find the ticker an error message is about.
    """
    if '"status"' not in text and '"event"' not in text:
        return None  # the fast path: bar frames carry neither key
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or ("status" not in obj and "event" not in obj):
        return None
    status = str(obj.get("status", "")).lower()
    event = str(obj.get("event", "")).lower()
    code = str(obj.get("code", ""))
    if status in _ERROR_STATUSES:
        return _classify_error(obj, code, tickers)
    if event == "heartbeat":
        return HeartbeatReply()
    if "SUBSCRI" in code.upper() or event in ("subscribe", "unsubscribe"):
        kind = "unsubscribe" if "UNSUB" in code.upper() or event == "unsubscribe" else "subscribe"
        return Ack(kind, _named_tickers(obj))
    return Notice(_message(obj, code) or text[:200])


def _classify_error(obj: dict[str, Any], code: str, tickers: Collection[str]) -> ServerMessage:
    message = _message(obj, code) or "(no message)"
    named = _named_tickers(obj)
    ours = named[0] if named else _known_ticker_in(message, tickers)
    # An error about one of our tickers is that ticker's problem, even if it says "forbidden".
    if ours is None and (is_auth_failure(message) or is_auth_failure(code)):
        return AuthFailure(message)
    if _ALREADY.search(message):
        return Notice(message)
    if ours is None:
        match = _TICKER_WORD.search(message)
        ours = str(match[1]) if match else None
    if ours is None and _SUBSCRIPTION_FIELD.search(message) and _REFUSAL.search(message):
        return SubscriptionRefused(message)
    return ServerError(message) if ours is None else TickerError(ours, message)


def _message(obj: dict[str, Any], code: str) -> str:
    for key in ("message", "error", "msg", "reason"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            return value
    return code


def _named_tickers(obj: dict[str, Any]) -> tuple[str, ...]:
    """Tickers in ``data`` or at the top level: ``tickers`` (list or "A,B"), ``ticker``, ``s``."""
    places = [obj.get("data"), obj]
    for place in places:
        if not isinstance(place, dict):
            continue
        value = place.get("tickers", place.get("ticker", place.get("s")))
        if isinstance(value, str) and value:
            return tuple(t.strip() for t in value.split(",") if t.strip())
        if isinstance(value, list):
            return tuple(t for t in value if isinstance(t, str))
    return ()


def _known_ticker_in(message: str, tickers: Collection[str]) -> str | None:
    found = next((t for t in _TOKEN.findall(message) if t in tickers), None)
    if found is None:  # a ticker with odd characters: errors are rare, a scan is affordable
        found = max((t for t in tickers if t and t in message), key=len, default=None)
    return found


def event_messages(
    event: str,
    subscription: Subscription,
    tickers: Iterable[str],
    max_bytes: int = MAX_EVENT_BYTES,
) -> list[str]:
    """``event`` for every ticker, split so that no message exceeds ``max_bytes`` (UTF-8).

    Duplicates are dropped and the order kept. A ticker too long to fit alone in a message is a
    :class:`ConfigurationError`.
    """
    sub = subscription
    base = SubscriptionEvent(event, sub.dataset, sub.channel, sub.frequency, sub.aggregation)
    empty = len(encode(base))
    chunks: list[list[str]] = []
    current: list[str] = []
    size = empty
    for ticker in dict.fromkeys(tickers):
        cost = len(orjson.dumps(ticker))  # its JSON text in the array
        if empty + cost > max_bytes:
            raise ConfigurationError(f"ticker {ticker[:40]!r}... does not fit in an event message")
        extra = cost + (1 if current else 0)  # the comma
        if size + extra > max_bytes:
            chunks.append(current)
            current, size, extra = [], empty, cost
        current.append(ticker)
        size += extra
    if current:
        chunks.append(current)
    return [encode(attrs.evolve(base, tickers=tuple(chunk))).decode() for chunk in chunks]


def split_tickers(tickers: Iterable[str], parts: int) -> list[tuple[str, ...]]:
    """The distinct tickers in order, cut into at most ``parts`` contiguous, even groups."""
    unique = list(dict.fromkeys(tickers))
    parts = max(1, min(parts, len(unique)))
    size, extra = divmod(len(unique), parts)
    groups, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        groups.append(tuple(unique[start:end]))
        start = end
    return groups


def url_with_key(url: str, api_key: str) -> str:
    """``url`` with its ``apikey`` query parameter set to ``api_key``."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "apikey"]
    query.append(("apikey", api_key))
    return urlunsplit(parts._replace(query=urlencode(query)))


# The server side (``finazon-trio serve``): what a Finazon server answers. Each reply echoes
# the event's ``request_id``, when it had one (the codec leaves a None one out).


@attrs.frozen(slots=True, kw_only=True)
class _Success:
    status: str = "success"
    code: str
    data: dict[str, Any]
    request_id: Any = None


@attrs.frozen(slots=True, kw_only=True)
class _Error:
    status: str = "error"
    message: str
    request_id: Any = None


@attrs.frozen(slots=True, kw_only=True)
class _HeartbeatAnswer:
    event: str = "heartbeat"
    status: str = "success"
    request_id: Any = None


def success_message(code: str, data: dict[str, Any], request_id: object = None) -> str:
    """An acknowledgement: ``{"status": "success", "code": code, "data": data}``."""
    return encode(_Success(code=code, data=data, request_id=request_id)).decode()


def error_message(text: str, request_id: object = None) -> str:
    """An error: ``{"status": "error", "message": text}``."""
    return encode(_Error(message=text, request_id=request_id)).decode()


def heartbeat_reply(request_id: object = None) -> str:
    """The answer to a heartbeat: ``{"event": "heartbeat", "status": "success"}``."""
    return encode(_HeartbeatAnswer(request_id=request_id)).decode()


def requested_tickers(value: object) -> list[str] | None:
    """The ``tickers`` of a client event (a list, or "A,B"); None if it is neither."""
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return list(value)
    return None
