"""What every backend shares: the typed arguments, the one constructor, the helpers, the constants.

A backend subclasses :class:`BackendBase` and declares what it takes (``DEVICES``,
``PRECISIONS``, ``OPTIONS``); the base class checks a caller's arguments against those
before anything is loaded, so every backend rejects a bad device, precision, option or
input size with the same :class:`BackendError` naming the valid choices. The subclass
then implements :meth:`BackendBase._load` (resolve ``auto``, load the model, session or
engine), ``infer`` and, where it holds anything, :meth:`BackendBase._release`.

Nothing here imports torch: the CLI imports this module to list ``--device`` and
``--precision`` choices.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from models.backends.base import BackendClosed, BatchOutput

if TYPE_CHECKING:
    from models.store.checkpoint import ModelCard


class Device(StrEnum):
    """Where a backend runs. A ``StrEnum``: it compares equal to its value, so ``"cuda"`` works too."""

    AUTO = "auto"  # CUDA when the backend's runtime sees a GPU, else the CPU
    CPU = "cpu"
    CUDA = "cuda"


class Precision(StrEnum):
    """The arithmetic a backend runs the network in."""

    AUTO = "auto"  # the backend's fastest faithful choice on the resolved device
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"  # TensorRT only, from a calibrated engine


DEVICE_CHOICES: tuple[str, ...] = tuple(d.value for d in Device)
# What ``roadseg run/eval/benchmarks`` offer; INT8 is reached through ``roadseg export`` + TensorRT.
PRECISION_CHOICES: tuple[str, ...] = tuple(p.value for p in Precision if p is not Precision.INT8)
DEFAULT_WARMUP_BATCHES = (1,)
# CPU flags under which oneDNN (torch, OpenVINO) runs bf16 natively; elsewhere bf16 is emulated (torch) or
# silently run as fp32 (OpenVINO), so ``auto`` does not pick it.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class BackendError(ValueError):
    """An unknown backend, or one that cannot run here; the message says why."""


class GraphLoadError(BackendError):
    """An exported file itself does not load (as opposed to a provider or contract problem)."""


# --- argument checks ----------------------------------------------------------------------------------------------


def parse_device(value: Device | str, backend: str, valid: Sequence[Device], hint: str = "") -> Device:
    """``value`` as a :class:`Device` this backend takes; BackendError listing the valid ones."""
    return _parse(Device, "device", value, backend, valid, hint)


def parse_precision(value: Precision | str, backend: str, valid: Sequence[Precision]) -> Precision:
    """``value`` as a :class:`Precision` this backend takes; BackendError listing the valid ones."""
    return _parse(Precision, "precision", value, backend, valid)


def _parse(kind: type[StrEnum], what: str, value: object, backend: str, valid: Sequence[StrEnum],
           hint: str = "") -> Any:
    try:
        member = kind(str(value))
    except ValueError:
        member = None
    if member is None or member not in valid:
        hint = f" ({hint})" if hint else ""
        raise BackendError(f"unknown {what} {value!r} for {backend}; valid: {', '.join(valid)}{hint}")
    return member


def check_options(backend: str, options: Mapping[str, object] | None, valid: Sequence[str]) -> dict[str, object]:
    """A backend's ``options`` as a dict; BackendError naming any it does not take."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise BackendError(f"{backend} backend: unknown options {unknown}; valid: {', '.join(valid) or 'none'}")
    return options


def model_input_hw(card: ModelCard, input_size: tuple[int, int] | None) -> tuple[int, int]:
    """(height, width) a backend feeds the model: ``input_size`` (width, height) or the card's
    native size; BackendError when the model cannot take it."""
    width, height = input_size or card.input.size
    problem = card.input.size_problem(width, height)
    if problem:
        raise BackendError(f"model {card.model_id}: {problem}")
    return height, width


def positive_int_option(backend: str, name: str, value: object) -> int:
    """An integer option such as ``threads`` or ``max_batch``; BackendError unless it is >= 1."""
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        raise BackendError(f"{backend} backend: option {name} must be a positive integer, got {value!r}")
    return number


# --- helpers ------------------------------------------------------------------------------------------------------


def ms_since(start_ns: int) -> float:
    """Milliseconds since a ``time.monotonic_ns()`` reading."""
    return (time.monotonic_ns() - start_ns) / 1e6


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@cache
def cpu_has_native_bf16() -> bool:
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
        return any(flag in flags for flag in CPU_BF16_FLAGS)
    return False


def group_by_shape(images: Sequence[np.ndarray]) -> Iterator[tuple[tuple[int, ...], list[int]]]:
    """Indices of same-sized images, in order of first appearance: one stacked copy per size."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    yield from groups.items()


# --- the one constructor ------------------------------------------------------------------------------------------


class BackendBase:
    """The constructor, ``warmup`` and ``close`` every backend shares.

    ``Backend(model, card, *, device, precision, input_size, options)``: the arguments are
    checked against the class's ``DEVICES``, ``PRECISIONS`` and ``OPTIONS`` and the card's
    input constraints, then :meth:`_load` resolves ``auto`` and loads. After it returns,
    ``device`` and ``precision`` are concrete (never ``auto``)."""

    name: ClassVar[str]
    DEVICES: ClassVar[tuple[Device, ...]] = (Device.AUTO, Device.CPU, Device.CUDA)
    PRECISIONS: ClassVar[tuple[Precision, ...]] = (Precision.AUTO, Precision.FP32)
    OPTIONS: ClassVar[tuple[str, ...]] = ()
    DEVICE_HINT: ClassVar[str] = ""  # said after "unknown device": where the backend runs, what to use instead

    device: Device
    precision: Precision
    # True when this instance fills ``BatchOutput.road`` (the drivable-road layer, one HxW bool mask per
    # image): a backend that runs the categories and the road margin of a model whose card lists the
    # ``road`` layer (``card.has_road``). False, and ``road`` None, everywhere else; set by ``_load``.
    provides_road: bool = False

    def __init__(
        self,
        model: Any,
        card: ModelCard,
        *,
        device: Device | str = Device.AUTO,
        precision: Precision | str = Precision.AUTO,
        input_size: tuple[int, int] | None = None,
        options: Mapping[str, object] | None = None,
    ) -> None:
        checked = check_options(self.name, options, self.OPTIONS)
        wanted_device = parse_device(device, self.name, self.DEVICES, self.DEVICE_HINT)
        wanted_precision = parse_precision(precision, self.name, self.PRECISIONS)
        self.card = card
        self.model_id = card.model_id
        self.input_hw = model_input_hw(card, input_size)
        self._closed = False
        self._load(model, wanted_device, wanted_precision, checked)

    def _load(self, model: Any, device: Device, precision: Precision, options: dict[str, object]) -> None:
        """Set ``self.device`` and ``self.precision`` (``auto`` resolved) and load the model."""
        raise NotImplementedError

    def infer(self, images: Sequence[np.ndarray]) -> BatchOutput:
        raise NotImplementedError

    def warmup(self, batch_sizes: Sequence[int] = DEFAULT_WARMUP_BATCHES) -> None:
        """One inference per batch size on black frames at the model size: kernels chosen,
        memory allocated, before the first real frame."""
        height, width = self.input_hw
        for batch in batch_sizes:
            self.infer([np.zeros((height, width, 3), np.uint8)] * batch)

    def close(self) -> None:
        """Release what the backend holds; idempotent. ``infer`` afterwards raises BackendClosed."""
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:
        """Drop the model, session or engine (called once, by :meth:`close`)."""

    def _check_open(self) -> None:
        if self._closed:
            raise BackendClosed(f"{self.name} backend for {self.model_id} is closed")
