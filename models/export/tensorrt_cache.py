"""TensorRT engine cache: file names, lookups, and the environment engines are keyed by.

An engine is specific to the weights, the exported graph, the GPU model and the
TensorRT version, so all of them are in its name::

    <cache>/engines/<fingerprint>-onnx<graph version>-<gpu slug>-trt<version>-<precision>-b<max batch>.engine
    <cache>/engines/<fingerprint>-onnx<graph version>-trt<version>-int8.calib    INT8 calibration cache

``fingerprint`` is :func:`models.export.fingerprint.model_fingerprint` (weights,
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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.store.checkpoint import ModelCard

from models.atomic import write_bytes_atomically
from models.backends.tensorrt_runtime import (  # noqa: F401 - re-exported with the cache's API
    SUPPORTED_TRT_MAJOR,
    TensorRTError,
    check_trt_version,
    cuda_gpu_name,
    import_tensorrt,
    trt_logger,
    trt_version,
)
from models.errors import ArtifactError
from models.export.onnx_export import EXPORT_VERSION

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_DIR = "engines"
ENGINE_SUFFIX = ".engine"
CALIBRATION_SUFFIX = ".calib"
_ENGINE_NAME = re.compile(r"^(?P<stem>.+)-b(?P<batch>\d+)\.engine$")


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


def write_atomically(path: Path, data: Any) -> None:
    """TensorRT's IHostMemory and cache buffers, written so a crash mid-write never leaves a
    truncated engine or calibration cache under the real name."""
    write_bytes_atomically(path, data)


def engine_for(fingerprint: str, card: ModelCard, size: tuple[int, int], *, precision: str,
               options: Mapping[str, object]) -> Path:
    """The engine a TensorRT backend runs (see :func:`models.export.artifacts.backend_artifact`):
    ``options["engine_path"]``, or the cached one for this GPU and TensorRT with the wanted (or
    the largest) max batch; ArtifactError with the build command when there is none."""
    explicit = options.get("engine_path")
    if explicit:
        path = Path(str(explicit)).expanduser()
        if not path.is_file():
            raise ArtifactError(f"TensorRT engine {path}: no such file")
        return path
    if options.get("cache_dir"):
        cache = Path(str(options["cache_dir"])).expanduser()
    else:
        from models.store.zoo import cache_dir

        cache = cache_dir()
    wanted = options.get("max_batch")
    try:
        trt = import_tensorrt()
        engines = find_engines(cache, fingerprint, cuda_gpu_name(), trt_version(trt), precision)
    except TensorRTError as exc:
        raise ArtifactError(str(exc)) from exc
    if wanted is not None:
        engines = {b: p for b, p in engines.items() if b == int(str(wanted))}
    if not engines:
        hint_name = str(options.get("model_name") or card.model_id)
        raise ArtifactError(missing_engine_message(hint_name, size, precision,
                                                   None if wanted is None else int(str(wanted))))
    return engines[max(engines)]
