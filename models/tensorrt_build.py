"""TensorRT engines from an exported ONNX graph: built once, cached, reused.

``roadseg export --format tensorrt`` calls :func:`build_engine`; the ``tensorrt``
backend (:mod:`models.backends.tensorrt_backend`) only ever loads what it built.
An engine is specific to the weights, the GPU model and the TensorRT version, so
all three are in its name::

    <cache>/engines/<fingerprint>-<gpu slug>-trt<version>-<precision>-b<max batch>.engine
    <cache>/engines/<fingerprint>-trt<version>-int8.calib    INT8 calibration cache

``fingerprint`` is :func:`models.backends.registry.model_fingerprint` (weights,
card and input size). The INT8 calibration cache holds per-tensor scales, which
TensorRT computes before layer fusion and so do not depend on the GPU; it is
keyed by model and TensorRT version only, and once written every later INT8
build of that model reuses it (reproducible engines; delete it to recalibrate).

The graph input is what :func:`models.export.export_onnx` produces: uint8 RGB,
NHWC, at the model's input resolution, dynamic batch; normalisation happens in
the graph. Calibration frames are prepared the same way as the backend prepares
camera frames (:func:`resize_nhwc_uint8`).

Everything here except :func:`build_engine` works without TensorRT or a GPU
(names, lookups, ONNX input inspection, calibration frames), so it is tested on
CPU-only machines too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: naming and lookups stay light for the CLI
    import torch

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_DIR = "engines"
ENGINE_SUFFIX = ".engine"
CALIBRATION_SUFFIX = ".calib"
DEFAULT_WORKSPACE_BYTES = 4 << 30
CALIBRATION_DEVICE = "cuda"  # where calibration batches are handed to TensorRT (tests without a GPU swap it)
_ENGINE_NAME = re.compile(r"^(?P<stem>.+)-b(?P<batch>\d+)\.engine$")


class TensorRTError(ValueError):
    """TensorRT missing, no GPU, an unusable ONNX graph or a failed build; the message says what to do."""


# --- names and lookups (no TensorRT needed) ---------------------------------------------------------------------


def gpu_slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"`` (safe in a file name)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "unknown-gpu"


def _version_slug(version: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", version).strip("-") or "unknown"


def _engine_stem(fingerprint: str, gpu: str, trt_version: str, precision: str) -> str:
    _check_precision(precision)
    return f"{fingerprint}-{gpu_slug(gpu)}-trt{_version_slug(trt_version)}-{precision}"


def engine_filename(fingerprint: str, gpu: str, trt_version: str, precision: str, max_batch: int) -> str:
    return f"{_engine_stem(fingerprint, gpu, trt_version, precision)}-b{int(max_batch)}{ENGINE_SUFFIX}"


def engine_path(cache: Path, fingerprint: str, gpu: str, trt_version: str, precision: str, max_batch: int) -> Path:
    """Where the engine for this model x GPU x TensorRT x precision x batch lives (whether or not it exists)."""
    return Path(cache) / ENGINE_DIR / engine_filename(fingerprint, gpu, trt_version, precision, max_batch)


def calibration_cache_path(cache: Path, fingerprint: str, trt_version: str) -> Path:
    """The INT8 calibration cache of a model under one TensorRT version (GPU-independent)."""
    return Path(cache) / ENGINE_DIR / f"{fingerprint}-trt{_version_slug(trt_version)}-int8{CALIBRATION_SUFFIX}"


def find_engines(cache: Path, fingerprint: str, gpu: str, trt_version: str, precision: str) -> dict[int, Path]:
    """Existing engines of this model/GPU/TensorRT/precision, by their max batch."""
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


def build_hint(model: str, precision: str) -> str:
    return f"build it with `roadseg export --model {model} --format tensorrt --precision {precision}`"


def missing_engine_message(model: str, input_size: tuple[int, int], precision: str) -> str:
    width, height = input_size
    return (
        f"no TensorRT engine for {model} at {width}x{height} {precision}; {build_hint(model, precision)} "
        "(engines are specific to the weights, the GPU and the TensorRT version, and are never built on the fly)"
    )


def _check_precision(precision: str) -> None:
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
    """The TensorRT version, or a TensorRTError unless it is 10.x (the API this code is written against)."""
    version = trt_version(trt)
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) != 10:
        raise TensorRTError(
            f"TensorRT {version} found; roadseg's TensorRT support is written for TensorRT 10 "
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


# --- the ONNX graph's input ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxInput:
    """The single image input of an exported graph: uint8 RGB, NHWC."""

    name: str
    batch: int | None  # None: dynamic
    height: int
    width: int


def read_onnx_input(path: Path) -> OnnxInput:
    """Inspect an exported graph's input (needs the ``onnx`` package, not TensorRT)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise TensorRTError(f"{path}: expected one image input, found {[v.name for v in inputs]}")
    value = inputs[0]
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.UINT8:
        dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise TensorRTError(f"{path}: input {value.name!r} is {dtype}; roadseg graphs take uint8 RGB NHWC")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    return OnnxInput(value.name, *_check_nhwc(dims, f"{path}: input {value.name!r}"))


def _check_nhwc(dims: list[int], what: str) -> tuple[int | None, int, int]:
    if len(dims) != 4 or dims[3] != 3 or dims[1] <= 0 or dims[2] <= 0:
        raise TensorRTError(f"{what} has shape {dims}; expected (batch, height, width, 3), fixed height and width")
    return (None if dims[0] <= 0 else dims[0]), dims[1], dims[2]


# --- preprocessing shared by calibration and the backend ----------------------------------------------------------


def resize_nhwc_uint8(batch: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """uint8 NHWC images -> uint8 NHWC at ``size_hw``, on the tensor's device.

    Same filter as the torch backend (bilinear, antialiased, half-pixel
    centres), then rounded back to uint8 because the graph takes uint8."""
    import torch
    import torch.nn.functional as F

    if tuple(batch.shape[1:3]) == tuple(size_hw):
        return batch.contiguous()
    x = batch.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def load_calibration_frames(source: str, count: int, size_hw: tuple[int, int]) -> np.ndarray:
    """The first ``count`` frames of a recorded drive (any ``--source`` spec), as the graph
    input: ``(N, height, width, 3)`` uint8 RGB, in the source's order."""
    if count < 1:
        raise TensorRTError(f"calibration needs at least one frame, got calibration_frames={count}")

    async def collect() -> list[np.ndarray]:
        import torch

        from stream.sources import EndOfStream, SourceOptions, open_source

        opened = await open_source("calibration", source, SourceOptions(max_frames=count))
        frames: list[np.ndarray] = []
        try:
            while len(frames) < count:
                try:
                    frame = await opened.recv()
                except EndOfStream:
                    break
                image = torch.from_numpy(np.array(frame.image)).unsqueeze(0)  # frames are read-only
                frames.append(resize_nhwc_uint8(image, size_hw)[0].numpy())
        finally:
            await opened.close()
        return frames

    try:
        frames = _run_coroutine(collect)
    except TensorRTError:
        raise
    except Exception as exc:  # SourceError and decode errors: name the source
        raise TensorRTError(f"calibration source {source!r}: {exc}") from exc
    if not frames:
        raise TensorRTError(f"calibration source {source!r} produced no frames")
    if len(frames) < count:
        log.warning("calibration source %s has only %d of the %d frames asked for", source, len(frames), count)
    return np.stack(frames)


def _run_coroutine(factory: Callable[[], Any]) -> Any:
    """``asyncio.run`` that also works when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="calibration") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def calibration_batches(frames: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    """Fixed-size batches (TensorRT calibrates at one shape); the last one wraps around to the first frames."""
    if batch < 1 or len(frames) == 0:
        raise TensorRTError(f"cannot make calibration batches of {batch} from {len(frames)} frames")
    count = len(frames)
    for start in range(0, count, batch):
        indices = [(start + i) % count for i in range(batch)]
        yield np.ascontiguousarray(frames[indices])


# --- building -----------------------------------------------------------------------------------------------------


def build_engine(
    onnx_path: Path,
    *,
    precision: str = "fp16",
    max_batch: int = 8,
    int8_calibration_source: str | None = None,
    calibration_frames: int = 64,
    cache_dir: Path | None = None,
    fingerprint: str,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> Path:
    """Build (or find) the engine of an exported graph for batches 1..``max_batch`` on this GPU.

    Returns the cached engine without building when it exists. ``int8`` also
    enables fp16 for layers without an int8 kernel, and needs either
    ``int8_calibration_source`` (a ``--source`` spec of a recorded drive) or an
    existing calibration cache for this model and TensorRT version."""
    _check_precision(precision)
    if max_batch < 1:
        raise TensorRTError(f"max_batch must be >= 1, got {max_batch}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise TensorRTError(f"ONNX graph {onnx_path}: no such file (export it first)")
    trt = import_tensorrt()
    version = check_trt_version(trt)
    gpu = cuda_gpu_name()
    if cache_dir is None:
        from models.zoo import cache_dir as default_cache_dir

        cache_dir = default_cache_dir()
    target = engine_path(cache_dir, fingerprint, gpu, version, precision, max_batch)
    if target.is_file():
        log.info("TensorRT engine cache hit: %s", target)
        return target
    calibration_cache = calibration_cache_path(cache_dir, fingerprint, version)
    if precision == "int8" and int8_calibration_source is None and not calibration_cache.is_file():
        raise TensorRTError(
            "INT8 needs calibration frames from a recorded drive: pass a calibration source "
            "(e.g. cityscapes:ROOT:val or a video file); no calibration cache exists yet at "
            f"{calibration_cache}"
        )

    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for error in errors:
            print(f"TensorRT ONNX parser: {error}", file=sys.stderr)
        raise TensorRTError(f"TensorRT could not parse {onnx_path}:\n  " + "\n  ".join(errors or ["(no details)"]))
    if network.num_inputs != 1:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise TensorRTError(f"{onnx_path}: expected one image input, found {names}")
    image = network.get_input(0)
    static_batch, height, width = _check_nhwc(list(tuple(image.shape)), f"{onnx_path}: input {image.name!r}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if static_batch is None:
        profile = builder.create_optimization_profile()
        shape_max = (max_batch, height, width, 3)
        # opt = max: the batcher fills batches under load, which is when speed matters.
        profile.set_shape(image.name, (1, height, width, 3), shape_max, shape_max)
        config.add_optimization_profile(profile)
    elif static_batch != max_batch:
        raise TensorRTError(
            f"{onnx_path} has a fixed batch of {static_batch}; build with max_batch={static_batch} "
            "or export with a dynamic batch"
        )
    if precision in ("fp16", "int8"):
        _set_builder_flag(trt, config, "FP16", precision)
    calibrator = None
    if precision == "int8":
        _set_builder_flag(trt, config, "INT8", precision)
        source = int8_calibration_source

        def frames() -> np.ndarray:
            if source is None:
                raise TensorRTError(
                    f"TensorRT did not accept the calibration cache {calibration_cache} and no calibration "
                    "source was given: delete the cache and build again with a calibration source"
                )
            log.info("INT8 calibration: reading %d frames from %s", calibration_frames, source)
            return load_calibration_frames(source, calibration_frames, (height, width))

        # TensorRT 10 calibrates at the profile's opt shape (batch = max_batch); set_calibration_profile is
        # deprecated there, so it is not called.
        calibrator = make_calibrator(
            trt, frames, batch=static_batch or max_batch, cache_path=calibration_cache, device=CALIBRATION_DEVICE
        )
        config.int8_calibrator = calibrator

    log.info("building TensorRT %s engine %s (batch 1..%d, %dx%d); this takes a while", precision, target.name,
             max_batch, width, height)
    serialized = builder.build_serialized_network(network, config)
    if calibrator is not None and calibrator.error is not None:
        raise calibrator.error
    if serialized is None:
        raise TensorRTError(
            f"TensorRT failed to build an engine from {onnx_path} ({precision}, batch 1..{max_batch}); "
            "its log above says why"
        )
    _write_atomically(target, serialized)
    log.info("TensorRT engine written: %s", target)
    return target


def _set_builder_flag(trt: ModuleType, config: Any, flag: str, precision: str) -> None:
    value = getattr(trt.BuilderFlag, flag, None)
    if value is None:
        raise TensorRTError(
            f"this TensorRT ({trt_version(trt)}) has no BuilderFlag.{flag}: {precision} engines need TensorRT 10"
        )
    config.set_flag(value)


def make_calibrator(
    trt: ModuleType, frames: Callable[[], np.ndarray], *, batch: int, cache_path: Path, device: str = "cuda"
) -> Any:
    """An ``IInt8EntropyCalibrator2`` fed fixed-size uint8 NHWC batches; its cache lives at ``cache_path``.

    Frames are only read when TensorRT asks for a batch, i.e. when no usable
    calibration cache exists. Errors raised inside TensorRT's callbacks cannot
    propagate through TensorRT, so they are kept in ``.error`` for the caller.
    ``device`` is for tests without a GPU; TensorRT needs ``cuda``."""
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.error: Exception | None = None
            self.batches_served = 0
            self._batches: Iterator[np.ndarray] | None = None
            self._device: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                if self._batches is None:
                    self._batches = calibration_batches(frames(), batch)
                host = next(self._batches, None)
                if host is None:
                    return None
                if self._device is None:
                    self._device = torch.empty(host.shape, dtype=torch.uint8, device=device)
                self._device.copy_(torch.from_numpy(host))
                if self._device.is_cuda:
                    torch.cuda.synchronize()  # TensorRT reads it on its own stream
                self.batches_served += 1
                return [int(self._device.data_ptr())] * len(names)
            except Exception as exc:
                self.error = exc
                return None

        def read_calibration_cache(self) -> bytes | None:
            if cache_path.is_file():
                log.info("INT8 calibration: reusing %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            try:
                _write_atomically(cache_path, cache)
                log.info("INT8 calibration cache written: %s", cache_path)
            except Exception as exc:
                self.error = exc

    return EntropyCalibrator()


def _write_atomically(path: Path, data: Any) -> None:
    """Write a bytes-like object (TensorRT's IHostMemory and cache buffers are) via a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(memoryview(data))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
