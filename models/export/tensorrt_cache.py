"""TensorRT engine cache: file names, lookups, and the environment engines are keyed by.

An engine is specific to the weights, the exported graph, the GPU model and the
TensorRT version, so all of them are in its name::

    <cache>/engines/<fingerprint>-onnx<graph version>-<gpu slug>-trt<version>-<precision>-b<max batch>.engine
    <cache>/engines/<fingerprint>-onnx<graph version>-trt<version>-int8.calib    INT8 calibration cache

``fingerprint`` is :func:`models.backends.registry.model_fingerprint` (weights,
card and input size); ``graph version`` is :data:`models.export.onnx_export.EXPORT_VERSION`,
so a change to the exported graph is never answered with an engine built from
the old one. The INT8 calibration cache holds per-tensor scales, which TensorRT
computes before layer fusion and so do not depend on the GPU; it is keyed by
model, graph and TensorRT version only.

Nothing here needs TensorRT or a GPU except :func:`import_tensorrt` and
:func:`cuda_gpu_name` (which say so clearly), so names and lookups are tested
on CPU-only machines too.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from models.atomic import write_bytes_atomically
from models.export.onnx_export import EXPORT_VERSION

PRECISIONS = ("fp32", "fp16", "int8")
SUPPORTED_TRT_MAJOR = 10  # the API this code is written against (INT8 calibrators and flags changed in 11)
ENGINE_DIR = "engines"
ENGINE_SUFFIX = ".engine"
CALIBRATION_SUFFIX = ".calib"
_ENGINE_NAME = re.compile(r"^(?P<stem>.+)-b(?P<batch>\d+)\.engine$")


class TensorRTError(ValueError):
    """TensorRT missing, no GPU, an unusable ONNX graph or a failed build; the message says what to do."""


# --- names and lookups --------------------------------------------------------------------------------------------


def gpu_slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"`` (safe in a file name)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "unknown-gpu"


def _version_slug(version: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", version).strip("-") or "unknown"


def _model_key(fingerprint: str) -> str:
    return f"{fingerprint}-onnx{_version_slug(EXPORT_VERSION)}"


def _engine_stem(fingerprint: str, gpu: str, trt_version: str, precision: str) -> str:
    check_precision(precision)
    return f"{_model_key(fingerprint)}-{gpu_slug(gpu)}-trt{_version_slug(trt_version)}-{precision}"


def engine_filename(fingerprint: str, gpu: str, trt_version: str, precision: str, max_batch: int) -> str:
    return f"{_engine_stem(fingerprint, gpu, trt_version, precision)}-b{int(max_batch)}{ENGINE_SUFFIX}"


def engine_path(cache: Path, fingerprint: str, gpu: str, trt_version: str, precision: str, max_batch: int) -> Path:
    """Where the engine for this model x graph x GPU x TensorRT x precision x batch lives (existing or not)."""
    return Path(cache) / ENGINE_DIR / engine_filename(fingerprint, gpu, trt_version, precision, max_batch)


def calibration_cache_path(cache: Path, fingerprint: str, trt_version: str) -> Path:
    """The INT8 calibration cache of a model and graph under one TensorRT version (GPU-independent)."""
    name = f"{_model_key(fingerprint)}-trt{_version_slug(trt_version)}-int8{CALIBRATION_SUFFIX}"
    return Path(cache) / ENGINE_DIR / name


def find_engines(cache: Path, fingerprint: str, gpu: str, trt_version: str, precision: str) -> dict[int, Path]:
    """Existing engines of this model/graph/GPU/TensorRT/precision, by their max batch."""
    stem = _engine_stem(fingerprint, gpu, trt_version, precision)
    folder = Path(cache) / ENGINE_DIR
    found: dict[int, Path] = {}
    if not folder.is_dir():
        return found
    for path in folder.glob(f"{_glob_escape(stem)}-b*{ENGINE_SUFFIX}"):
        match = _ENGINE_NAME.match(path.name)
        if match and match.group("stem") == stem and path.is_file():
            found[int(match.group("batch"))] = path
    return found


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def build_hint(model: str, precision: str, size: tuple[int, int] | None = None, max_batch: int | None = None) -> str:
    """The ``roadseg export`` command that builds the engine the backend looked for: the size and
    batch are spelled out because the export's defaults may not be what the backend asked for."""
    command = f"roadseg export --model {model} --format tensorrt --precision {precision}"
    if size is not None:
        command += f" --size {size[0]}x{size[1]}"
    if max_batch is not None:
        command += f" --max-batch {max_batch}"
    return f"build it with `{command}`"


def missing_engine_message(
    model: str, input_size: tuple[int, int], precision: str, max_batch: int | None = None
) -> str:
    width, height = input_size
    batch = "" if max_batch is None else f" (max batch {max_batch})"
    return (
        f"no TensorRT engine for {model} at {width}x{height} {precision}{batch}; "
        f"{build_hint(model, precision, input_size, max_batch)} (engines are specific to the weights, the GPU "
        "and the TensorRT version, and are never built on the fly)"
    )


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise TensorRTError(f"unknown TensorRT precision {precision!r}; valid: {', '.join(PRECISIONS)}")


# --- environment --------------------------------------------------------------------------------------------------


def import_tensorrt() -> ModuleType:
    """``import tensorrt`` or a TensorRTError saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTError(
            f"TensorRT is not installed ({exc}): install NVIDIA's wheels matching your CUDA, "
            "e.g. `pip install tensorrt` (TensorRT 10), on a machine with an NVIDIA GPU"
        ) from exc
    return tensorrt


def trt_version(trt: ModuleType) -> str:
    return str(getattr(trt, "__version__", "unknown"))


def check_trt_version(trt: ModuleType) -> str:
    """The TensorRT version, or a TensorRTError unless it is the major version this code is written for."""
    version = trt_version(trt)
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) != SUPPORTED_TRT_MAJOR:
        raise TensorRTError(
            f"TensorRT {version} found; roadseg's TensorRT support is written for TensorRT {SUPPORTED_TRT_MAJOR} "
            "(INT8 calibrators and precision flags changed in 11)"
        )
    return version


def cuda_gpu_name() -> str:
    """The current CUDA device's name, or a TensorRTError when torch sees no GPU."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTError("TensorRT needs a CUDA GPU and torch sees none (check the driver, CUDA_VISIBLE_DEVICES)")
    return str(torch.cuda.get_device_name(torch.cuda.current_device()))


@cache
def trt_logger(trt: ModuleType) -> Any:
    """One TensorRT logger per process (builder and runtime share it)."""
    return trt.Logger(trt.Logger.WARNING)


def write_atomically(path: Path, data: Any) -> None:
    """TensorRT's IHostMemory and cache buffers, written so a crash mid-write never leaves a
    truncated engine or calibration cache under the real name."""
    write_bytes_atomically(path, data)
