"""Declarative checks of a network's builder arguments, before anything is built.

A model card is untrusted input (any ``.safetensors`` file can be passed to ``--model``):
its ``arguments`` go straight into a network constructor, where a wrong key is a
``TypeError``, ``0`` a ``ZeroDivisionError`` and ``num_classes: 2e7`` a 20 GB allocation.
Each family therefore declares the keys it takes, with a type and a range
(:class:`Arg`), and :func:`check_arguments` refuses anything else with a message naming
the key. The ranges are generous for real networks and far below what exhausts memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Shared limits: well above every real configuration, far below a multi-GB tensor.
MAX_CLASSES = 1024  # Cityscapes has 19 trainIds, ADE20K 150; a 1024-way head is still small
MAX_CHANNELS = 2048  # smp's widest default decoder width is 1024 (DPT)
MAX_LIST_LENGTH = 8  # per-stage lists (decoder channels, atrous rates): a handful of stages
MAX_SHOWN_CHARS = 60  # a hostile value is quoted in the message, but not a megabyte of it

KINDS = ("int", "float", "bool", "str", "int_list", "float_list", "none")


class ModelConfigError(ValueError):
    """An unknown architecture, encoder or argument; the message lists valid choices."""


@dataclass(frozen=True)
class Arg:
    """One builder argument: the JSON kinds it may take, and limits on its value.

    ``kinds`` from :data:`KINDS` (``int_list``/``float_list``: a list of numbers; ``none``:
    JSON null); ``low``/``high`` bound numbers and every element of a list; ``length`` fixes
    a list's length; ``choices`` lists the only values allowed (after the kind check)."""

    kinds: tuple[str, ...]
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    required: bool = False
    length: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"Arg kinds {sorted(unknown)} not in {KINDS}")

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        parts = []
        for kind in self.kinds:
            count = f"{self.length}" if self.length is not None else f"up to {MAX_LIST_LENGTH}"
            name = {"int": "an integer", "float": "a number", "bool": "true/false", "str": "a string",
                    "int_list": f"a list of {count} integers", "float_list": f"a list of {count} numbers",
                    "none": "null"}[kind]
            parts.append(name)
        text = " or ".join(parts)
        if self.low is not None or self.high is not None:
            text += f" in {_num(self.low)}..{_num(self.high)}"
        return text


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


def _num(value: float | None) -> str:
    if value is None:
        return "any"
    return str(int(value)) if float(value).is_integer() else str(value)


def _kind_of(value: Any) -> str | None:
    # bool is a subclass of int in Python: test it first so `true` is never a channel count.
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list | tuple):
        kinds = {_kind_of(v) for v in value}
        if kinds <= {"int"}:
            return "int_list"
        if kinds <= {"int", "float"}:
            return "float_list"
    return None


def _accepts(arg: Arg, value: Any) -> bool:
    kind = _kind_of(value)
    # A float argument may be written as 2 in JSON, a list of floats as [1, 2.5].
    if kind == "int" and "int" not in arg.kinds and "float" in arg.kinds:
        kind = "float"
    if kind == "int_list" and "int_list" not in arg.kinds and "float_list" in arg.kinds:
        kind = "float_list"
    if kind not in arg.kinds:
        return False
    if arg.choices is not None:
        return value in arg.choices
    if kind in ("int", "float"):
        # Range first: a 400-digit JSON integer compares fine but overflows math.isfinite.
        return _in_range(arg, value) and (kind == "int" or math.isfinite(value))
    if kind in ("int_list", "float_list"):
        length_ok = len(value) == arg.length if arg.length is not None else 1 <= len(value) <= MAX_LIST_LENGTH
        return length_ok and all(_in_range(arg, v) and (kind == "int_list" or math.isfinite(v)) for v in value)
    return True


def _in_range(arg: Arg, value: float) -> bool:
    return (arg.low is None or value >= arg.low) and (arg.high is None or value <= arg.high)


def check_arguments(label: str, arguments: Any, schema: Mapping[str, Arg]) -> None:
    """ModelConfigError naming the first key of ``arguments`` that ``schema`` does not allow:
    unknown, missing when required, of the wrong kind, or out of range. ``label`` says whose
    keys these are, e.g. ``"dabnet argument"``."""
    if not isinstance(arguments, Mapping):
        raise ModelConfigError(f"{label}s must be a JSON object, got {type(arguments).__name__}")
    for key, value in arguments.items():
        arg = schema.get(key)
        if arg is None:
            raise ModelConfigError(f"{label} {_shown(key)} is unknown; valid: {', '.join(schema) or 'none'}")
        if not _accepts(arg, value):
            raise ModelConfigError(f"{label} {key!r} must be {arg.describe()}, got {_shown(value)}")
    missing = [key for key, arg in schema.items() if arg.required and key not in arguments]
    if missing:
        raise ModelConfigError(f"{label} {missing[0]!r} is required ({schema[missing[0]].describe()})")
