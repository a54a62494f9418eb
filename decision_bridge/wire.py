"""Strict JSON for the wire: what every roadseg message body must be beyond the JSON grammar.

Shared by the mask schema (:mod:`decision_bridge.schema`) and the stream messages
(:mod:`decision_bridge.liveness`), on both sides: any byte sequence a peer sends ends as a
:class:`SchemaError` naming what is wrong, never another exception (SCHEMA.md section 3).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any, TypeVar

import numpy as np

MAX_HEADER_BYTES = 64 * 1024
# Header JSON limits beyond the JSON grammar (SCHEMA.md section 3), so any byte sequence
# is a SchemaError and never a crash: objects/arrays nest at most this deep (the header
# object itself is level 1; v1 headers use 3), and every integer fits a signed 64-bit int.
MAX_JSON_DEPTH = 32
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

E = TypeVar("E", bound=Enum)


class SchemaError(ValueError):
    """A message (or a value about to become one) violates the ``roadseg.mask`` schema."""


def _frame_bytes(index: int, part: object) -> bytes:
    """One frame as bytes: bytes, or anything exposing a buffer (bytearray, memoryview, zmq.Frame)."""
    if isinstance(part, bytes):
        return part
    if isinstance(part, (str, int)):  # bytes(5) would silently be five zero bytes
        raise SchemaError(f"message part {index} must be bytes, got {type(part).__name__}")
    try:
        return memoryview(part).tobytes()  # type: ignore[arg-type]
    except TypeError:
        raise SchemaError(f"message part {index} must be bytes, got {type(part).__name__}") from None


def _load_json(raw: bytes) -> Mapping[str, Any]:
    """Header frame -> JSON object, within the limits of SCHEMA.md section 3 beyond JSON itself.

    Rejected: over MAX_HEADER_BYTES; not UTF-8; not JSON; nesting deeper than MAX_JSON_DEPTH
    (checked before parsing, so the recursive parser never nears any stack limit); the
    non-JSON tokens NaN/Infinity/-Infinity that Python's json accepts; numbers that overflow
    a double (1e400 would become inf); integers outside signed 64-bit; strings with a lone
    (unpaired) surrogate escape such as "\\ud800", which no UTF-8 encoder can write back.
    Duplicate keys are not rejected: the last occurrence wins (Python's json; publishers
    never write duplicates, so do not rely on it).
    """
    if len(raw) > MAX_HEADER_BYTES:
        raise SchemaError(f"header is {len(raw)} bytes, limit {MAX_HEADER_BYTES}")
    _check_json_depth(raw)
    try:
        obj = json.loads(
            raw.decode("utf-8"),
            parse_int=_parse_json_int,
            parse_float=_parse_json_float,
            parse_constant=_reject_json_constant,
        )
    except SchemaError:
        raise
    except RecursionError as exc:  # unreachable after _check_json_depth; belt and braces
        raise SchemaError(f"header JSON nests too deeply (limit {MAX_JSON_DEPTH} levels)") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise SchemaError(f"header is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise SchemaError(f"header must be a JSON object, got {type(obj).__name__}")
    # Strict UTF-8 decoding already refused encoded surrogates, so a lone surrogate can only
    # come from a \u escape: without one there is nothing to walk.
    if b"\\u" in raw:
        _check_json_text(obj)
    return obj


# A JSON string, escapes included; the closing quote is optional so an unterminated string
# ends the scan instead of making the regex backtrack (possessive: linear time).
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_BRACKET_DELTA = np.zeros(256, np.int8)
_BRACKET_DELTA[list(b"[{")] = 1
_BRACKET_DELTA[list(b"]}")] = -1


def _check_json_depth(raw: bytes) -> None:
    """Reject nesting deeper than MAX_JSON_DEPTH without parsing (milliseconds for 64 KiB).

    Exact for valid JSON. For invalid JSON the parser fails at the first error, and up to
    there it has seen the same brackets outside strings as this scan, so it never nests
    deeper than the scan measured either.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return  # cannot nest deeper than it has brackets: every normal header stops here
    skeleton = _JSON_STRING.sub(b"", raw)  # brackets inside strings are not structure
    if not skeleton:
        return
    depth = np.cumsum(_BRACKET_DELTA[np.frombuffer(skeleton, np.uint8)], dtype=np.int32)
    deepest = int(depth.max())
    if deepest > MAX_JSON_DEPTH:
        raise SchemaError(f"header JSON nests {deepest} levels deep, limit {MAX_JSON_DEPTH}")


def _parse_json_int(text: str) -> int:
    # 20 characters hold every int64 ("-9223372036854775808"); longer is out of range, and
    # checking the length first avoids converting thousands of digits.
    value = int(text) if len(text) <= 20 else None
    if value is None or not INT64_MIN <= value <= INT64_MAX:
        raise SchemaError(f"header integer {text:.40} is outside the signed 64-bit range")
    return value


def _parse_json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise SchemaError(f"header number {text:.40} overflows a 64-bit float")
    return value


def _reject_json_constant(text: str) -> Any:
    raise SchemaError(f"header contains {text}, which is not JSON (numbers are never NaN or infinite)")


def _check_text(value: str, where: str) -> None:
    """A str that came from JSON may hold a lone surrogate (from a "\\ud800" escape)."""
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SchemaError(
            f"{where} has a lone surrogate at index {exc.start} (escaped surrogates must pair)"
        ) from None


def _check_json_text(obj: Any) -> None:
    """Every string in a parsed header, keys included (depth already bounded; iterative)."""
    stack: list[tuple[Any, str]] = [(obj, "")]  # (value, its path in the header)
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                # repr, not the key itself: it may hold the surrogate, and messages must stay printable.
                _check_text(key, f"key {key!r:.40} in {f'field {where}' if where else 'the header'}")
                plain = key.isascii() and key.isidentifier()
                stack.append((item, (f"{where}.{key}" if where else key) if plain else f"{where}[{key!r:.40}]"))
        elif isinstance(value, list):
            stack += ((item, f"{where}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, f"field {where}" if where else "the header")


_TYPE_NAMES = {
    int: "integer (signed 64-bit)",
    float: "number",
    str: "string",
    bool: "boolean",
    dict: "object",
    list: "array",
}


def _is(value: Any, kind: type) -> bool:
    # JSON true/false arrive as Python bool, a subclass of int: never accept them as numbers.
    if isinstance(value, bool):
        return kind is bool
    # Integers must fit int64 even where a number is expected (float() of 10**400 overflows).
    # _load_json already refuses others; this covers objects handed to header_from_json.
    if isinstance(value, int) and kind in (int, float):
        return INT64_MIN <= value <= INT64_MAX
    if kind is float:
        return isinstance(value, float) and math.isfinite(value)
    return isinstance(value, kind)


def _preview(value: Any) -> str:
    """A short repr for error messages; safe for ints too long for str() (over 4300 digits)."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"a {value.bit_length()}-bit integer"
    return f"{value!r:.40}"


def _take(obj: Mapping[str, Any], name: str, kind: type, *, nullable: bool = False, where: str = "") -> Any:
    if name not in obj:
        raise SchemaError(f"missing field {where}{name}")
    value = obj[name]
    if value is None and nullable:
        return None
    if not _is(value, kind):
        expected = _TYPE_NAMES[kind] + (" or null" if nullable else "")
        raise SchemaError(f"field {where}{name} must be {expected}, got {_preview(value)}")
    return float(value) if kind is float else value


def _take_optional(obj: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
    """A key added within a version: older publishers omit it, so absent (or null) means ``default``."""
    if obj.get(name) is None:
        return default
    return _take(obj, name, kind)


def _take_list(
    obj: Mapping[str, Any], name: str, kind: type, *, nullable: bool = False, where: str = ""
) -> list[Any]:
    items = _take(obj, name, list, where=where)
    for i, item in enumerate(items):
        if not (nullable and item is None) and not _is(item, kind):
            raise SchemaError(f"field {where}{name}[{i}] must be {_TYPE_NAMES[kind]}, got {_preview(item)}")
    return [float(x) if kind is float and x is not None else x for x in items]


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _check_scalars(value: Any, where: str) -> None:
    """Every str valid Unicode and every int signed 64-bit, through nested dataclasses and tuples.

    Generic over the fields, so fields added later are covered; on the encode side it turns a
    lone surrogate (which topic_for could not encode) or an int64 overflow into a SchemaError.
    """
    if isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_text(value, f"field {where}")
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise SchemaError(f"field {where} must fit a signed 64-bit integer, got {_preview(value)}")
    elif is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES.get(type(value))
        if names is None:
            names = _FIELD_NAMES[type(value)] = tuple(f.name for f in fields(value))
        prefix = f"{where}." if where else ""
        for name in names:
            item = getattr(value, name)
            # Inline fast path (every normal field): this runs on every encode and decode.
            kind = type(item)
            if kind is int and INT64_MIN <= item <= INT64_MAX:
                continue
            if item is None or kind is float or kind is bool or (kind is str and item.isascii()):
                continue
            _check_scalars(item, prefix + name)
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            if item is None or type(item) is float or (type(item) is str and item.isascii()):
                continue
            _check_scalars(item, f"{where}[{i}]")


def dump_json(body: Mapping[str, Any], what: str) -> bytes:
    """A message body as compact UTF-8 JSON; SchemaError for NaN/inf (not JSON) naming ``what``."""
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except ValueError as exc:
        raise SchemaError(f"{what} not JSON-serialisable: {exc}") from exc


def check_schema(obj: Mapping[str, Any], name: str, supported: tuple[int, ...]) -> int:
    """The message's ``version``, after checking its ``schema`` is ``name`` and the version is one
    this decoder was written for (SCHEMA.md section 7)."""
    schema = _take(obj, "schema", str)
    if schema != name:
        raise SchemaError(f"wrong schema {schema!r}, expected {name!r}")
    version: int = _take(obj, "version", int)
    if version not in supported:
        raise SchemaError(f"unsupported {name} version {version} "
                          f"(this decoder supports: {', '.join(map(str, supported))})")
    return version


# ---------------------------------------------------------------- shared by the message modules


def split_message(parts: Sequence[bytes], names: Sequence[str], what: str) -> list[bytes]:
    """The frames of a ``what`` message as bytes, after checking there are as many as ``names``."""
    if len(parts) != len(names):
        raise SchemaError(f"expected {len(names)} parts [{', '.join(names)}] for a {what} message, "
                          f"got {len(parts)}")
    return [_frame_bytes(i, p) for i, p in enumerate(parts)]


def check_topic(topic: bytes, expected: bytes, what: str, stream_id: str) -> None:
    """The received topic must be the one the header names (``expected``, of a non-empty stream id)."""
    if not stream_id or topic != expected:
        raise SchemaError(f"topic {topic[:64]!r} does not match {what} of {stream_id!r}")


def check_stream_header(header: Any, *, seq_field: str = "seq", min_seq: int = 0) -> None:
    """Invariants of every per-stream header: its scalars (:func:`check_scalars`), a non-empty
    ``stream_id``, and its sequence number ``seq_field`` at least ``min_seq``."""
    _check_scalars(header, "")  # every string valid Unicode, every integer signed 64-bit
    if not header.stream_id:
        raise SchemaError("field stream_id must not be empty")
    seq = getattr(header, seq_field)
    if seq < min_seq:
        raise SchemaError(f"field {seq_field} must be >= {min_seq}, got {seq}")


def take_enum(obj: Mapping[str, Any], name: str, kind: type[E]) -> E:
    """String field ``name`` as a member of ``kind``; SchemaError for a value it does not have."""
    value = _take(obj, name, str)
    try:
        return kind(value)
    except ValueError:
        raise SchemaError(f"field {name}: unsupported {value!r}") from None


# Public names for the message modules (the underscored ones stay the implementation).
frame_bytes = _frame_bytes
load_json = _load_json
take = _take
take_optional = _take_optional
take_list = _take_list
check_scalars = _check_scalars
