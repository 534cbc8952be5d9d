"""The one cattrs converter: the records that cross a boundary, to JSON bytes and back.

Records (recording lines, message-log lines, client events, server replies) are frozen attrs
classes; this module turns them into JSON (bytes, ready for a file, a socket or Kafka) and JSON
back into them, with one converter built once, at import, from cattrs' orjson preconfiguration,
and these conventions on top:

* ``bytes`` are written as text when they are valid UTF-8, otherwise as ``{"base64": "..."}``;
  either is read back.
* Fields are written in field order, ``null`` included, except that a field whose default is
  ``None`` is left out while it is ``None`` (a reply's ``request_id``, a failed message's
  ``error``) and otherwise comes after all the others: declare such fields last.
* Reading is strict: a value of the wrong JSON type is an error, never converted (``"1"`` is
  not an integer, ``1`` not a string, ``true`` neither), and only a JSON array is a sequence.
  Keys a class does not know are ignored.

What does not fit is a :class:`DecodeError` that names each field at fault (:class:`Fault`), so
that a reader can turn it into its own reasons. Hand-encoded formats (the spool's columns, the
transform's records) say so, with the figure, where they are written; they follow the same
conventions, with :func:`bytes_as_json` and :func:`bytes_from_json`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, get_args, get_origin

import attrs
import orjson
from cattrs.cols import homogenous_tuple_structure_factory, list_structure_factory
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ClassValidationError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.orjson import OrjsonConverter, make_converter

_T = TypeVar("_T")

#: The JSON path of a value within a text: attribute names (and keys) and list indexes.
Path = tuple[str | int, ...]


@attrs.frozen(slots=True)
class Fault:
    """One value that does not fit: where it is, what was expected there, and why not."""

    path: Path
    #: The type the value should have had (``None`` when the value as a whole is wrong).
    expected: Any
    why: str

    def __str__(self) -> str:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path)
        return f"${where}: {self.why}"


class DecodeError(ValueError):
    """A JSON text or value that does not fit the class it was read as."""

    def __init__(self, faults: tuple[Fault, ...]) -> None:
        super().__init__("; ".join(map(str, faults)) or "does not fit")
        self.faults = faults

    def fields(self) -> set[str | int]:
        """The top-level fields at fault."""
        return {fault.path[0] for fault in self.faults if fault.path}


def encode(record: object) -> bytes:
    """``record`` as compact JSON."""
    return _converter.dumps(record)


def encode_line(record: object) -> bytes:
    """``record`` as a JSON Lines line, newline included."""
    return _converter.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def decode(data: bytes | str, cls: type[_T]) -> _T:
    """The ``cls`` in a JSON text; :class:`DecodeError` if it is not JSON or does not fit."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError((Fault((), None, f"not JSON ({exc})"),)) from None
    return structure(value, cls)


def structure(value: object, cls: type[_T]) -> _T:
    """The ``cls`` in a value parsed from JSON; :class:`DecodeError` if it does not fit."""
    try:
        return _converter.structure(value, cls)
    except BaseValidationError as exc:
        raise DecodeError(tuple(_faults(exc, (), cls))) from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a scalar at the top
        raise DecodeError((Fault((), cls, _why(exc)),)) from None


def _faults(exc: BaseException, path: Path, expected: Any) -> Iterator[Fault]:
    """The leaves of a cattrs validation error, each with its path."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        with_notes, without_notes = exc.group_exceptions()
        for inner, note in with_notes:
            if isinstance(note, AttributeValidationNote):
                yield from _faults(inner, (*path, note.name), note.type)
            elif isinstance(note, IterableValidationNote):  # an index, or a mapping's key
                yield from _faults(inner, (*path, note.index), note.type)
        for inner in without_notes:
            yield from _faults(inner, path, expected)
    else:
        yield Fault(path, expected, _why(exc))


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "missing"
    return str(exc) or type(exc).__name__


def _kind(value: object) -> str:
    """The JSON name of a value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def bytes_as_json(data: bytes) -> str | dict[str, str]:
    """``data`` as the codec writes bytes: text if valid UTF-8, else ``{"base64": "..."}``."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def bytes_from_json(value: object, _: object = None) -> bytes:
    """The bytes :func:`bytes_as_json` wrote; ``ValueError`` (or ``TypeError``) if not that."""
    if type(value) is str:
        return value.encode()
    if type(value) is dict and type(encoded := value.get("base64")) is str:
        return base64.b64decode(encoded, validate=True)
    raise TypeError(f'expected text or {{"base64": ...}}, not {_kind(value)}')


def _str(value: object, _: object = None) -> str:
    if type(value) is not str:
        raise TypeError(f"expected a string, not {_kind(value)}")
    return value


def _int(value: object, _: object = None) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, not {_kind(value)}")
    return value


def _float(value: object, _: object = None) -> float:
    if type(value) is not float and type(value) is not int:
        raise TypeError(f"expected a number, not {_kind(value)}")
    return float(value)


def _bool(value: object, _: object = None) -> bool:
    if type(value) is not bool:
        raise TypeError(f"expected a boolean, not {_kind(value)}")
    return value


def _is_array(cls: Any) -> bool:
    return get_origin(cls) in (list, tuple)


def _build() -> OrjsonConverter:
    converter = make_converter()

    def unstructure_record(cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
        omit_none = override(omit_if_default=True)
        optional: dict[str, Any] = {
            a.name: omit_none for a in attrs.fields(cls) if a.default is None
        }
        return make_dict_unstructure_fn(cls, converter, **optional)

    def structure_record(cls: type[Any]) -> Callable[[Any, Any], Any]:
        inner = make_dict_structure_fn(cls, converter)

        def structure(value: Any, _: Any = cls) -> Any:
            if type(value) is not dict:
                raise TypeError(f"expected an object, not {_kind(value)}")
            return inner(value, cls)

        return structure

    def structure_array(cls: Any) -> Callable[[Any, Any], Any]:
        if get_origin(cls) is list:
            inner = list_structure_factory(cls, converter)
        elif get_args(cls)[-1:] == (Ellipsis,):
            inner = homogenous_tuple_structure_factory(cls, converter)
        else:
            inner = converter._structure_tuple  # a fixed-length tuple: [name, value]

        def structure(value: Any, _: Any = cls) -> Any:
            if type(value) is not list:
                raise TypeError(f"expected an array, not {_kind(value)}")
            return inner(value, cls)

        return structure

    converter.register_unstructure_hook(bytes, bytes_as_json)
    converter.register_unstructure_hook_factory(attrs.has, unstructure_record)
    converter.register_structure_hook(bytes, bytes_from_json)
    converter.register_structure_hook(str, _str)
    converter.register_structure_hook(int, _int)
    converter.register_structure_hook(float, _float)
    converter.register_structure_hook(bool, _bool)
    converter.register_structure_hook_factory(attrs.has, structure_record)
    converter.register_structure_hook_factory(_is_array, structure_array)
    return converter


_converter = _build()
