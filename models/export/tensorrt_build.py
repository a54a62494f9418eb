"""TensorRT engines from an exported ONNX graph: built once, cached, reused.

``roadseg export --format tensorrt`` calls :func:`build_engine`; the ``tensorrt``
backend (:mod:`models.backends.tensorrt_backend`) only ever loads what it built.
Engine and calibration-cache names, lookups and the environment checks live in
:mod:`models.export.tensorrt_cache` (re-exported here); this module reads the graph's
input, prepares INT8 calibration frames and runs the TensorRT 10 builder. Once
an INT8 calibration cache is written, every later INT8 build of that model
reuses it (reproducible engines; delete it to recalibrate).

The graph input is what :func:`models.export.onnx_export.export_onnx` produces: uint8 RGB,
NHWC, at the model's input resolution, dynamic batch; normalisation happens in
the graph. Calibration frames are prepared the same way as the backend prepares
camera frames (:func:`resize_nhwc_uint8`).

Everything here except :func:`build_engine` works without TensorRT or a GPU
(ONNX input inspection, calibration frames and batches), so it is tested on
CPU-only machines too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from models.backends.tensorrt_runtime import resize_nhwc_uint8
from models.errors import DatasetError
from models.export.tensorrt_cache import (  # noqa: F401 - re-exported: this module is the TensorRT API callers import
    PRECISIONS,
    TensorRTError,
    build_hint,
    calibration_cache_path,
    check_precision,
    check_trt_version,
    cuda_gpu_name,
    engine_filename,
    engine_path,
    find_engines,
    gpu_slug,
    import_tensorrt,
    missing_engine_message,
    trt_logger,
    trt_version,
    write_atomically,
)

if TYPE_CHECKING:  # torch is imported where it is used: naming and lookups stay light for the CLI
    import torch

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_BYTES = 4 << 30
CALIBRATION_DEVICE = "cuda"  # where calibration batches are handed to TensorRT (tests without a GPU swap it)


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


def load_calibration_frames(source: str, count: int, size_hw: tuple[int, int]) -> np.ndarray:
    """The first ``count`` frames of a recorded drive (any ``--source`` spec), as the graph
    input: ``(N, height, width, 3)`` uint8 RGB, in the source's order."""
    if count < 1:
        raise TensorRTError(f"calibration needs at least one frame, got calibration_frames={count}")

    import torch

    from models.datasets.recordings import read_frames

    try:
        images = read_frames(source, count)
    except (DatasetError, OSError) as exc:  # name the source
        raise TensorRTError(f"calibration source {source!r}: {exc}") from exc
    frames = [resize_nhwc_uint8(torch.from_numpy(image).unsqueeze(0), size_hw)[0].numpy() for image in images]
    if not frames:
        raise TensorRTError(f"calibration source {source!r} produced no frames")
    if len(frames) < count:
        log.warning("calibration source %s has only %d of the %d frames asked for", source, len(frames), count)
    return np.stack(frames)


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
    onnx_path = Path(onnx_path)
    _check_build_arguments(onnx_path, precision, max_batch, int8_calibration_source, calibration_frames)
    trt = import_tensorrt()
    version = check_trt_version(trt)
    gpu = cuda_gpu_name()
    if cache_dir is None:
        from models.store.zoo import cache_dir as default_cache_dir

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

    builder = trt.Builder(trt_logger(trt))
    # The parser owns the weight buffers the network points into: it must outlive the build.
    network, parser = _parse_onnx(trt, builder, onnx_path)
    config, size_hw = _builder_config(trt, builder, network, onnx_path, precision, max_batch, workspace_bytes)
    calibrator = None
    if precision == "int8":
        calibrator = _int8_calibrator(
            trt, calibration_cache, int8_calibration_source, calibration_frames, size_hw, max_batch
        )
        config.int8_calibrator = calibrator
    log.info(
        "building TensorRT %s engine %s (batch 1..%d, %dx%d); this takes a while",
        precision,
        target.name,
        max_batch,
        size_hw[1],
        size_hw[0],
    )
    serialized = builder.build_serialized_network(network, config)
    del parser
    if calibrator is not None and calibrator.error is not None:
        raise calibrator.error
    if serialized is None:
        raise TensorRTError(
            f"TensorRT failed to build an engine from {onnx_path} ({precision}, batch 1..{max_batch}); "
            "its log above says why"
        )
    write_atomically(target, serialized)
    log.info("TensorRT engine written: %s", target)
    return target


def _check_build_arguments(
    onnx_path: Path, precision: str, max_batch: int, calibration_source: str | None, calibration_frames: int
) -> None:
    """Everything that can be checked before importing TensorRT, so bad arguments fail fast anywhere."""
    check_precision(precision)
    if max_batch < 1:
        raise TensorRTError(f"max_batch must be >= 1, got {max_batch}")
    if precision == "int8" and calibration_source is not None and calibration_frames < 1:
        raise TensorRTError(f"calibration needs at least one frame, got calibration_frames={calibration_frames}")
    if not onnx_path.is_file():
        raise TensorRTError(f"ONNX graph {onnx_path}: no such file (export it first)")


def _parse_onnx(trt: ModuleType, builder: Any, onnx_path: Path) -> tuple[Any, Any]:
    """The network definition of ``onnx_path`` and its parser (keep both alive until the build is done)."""
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger(trt))
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for error in errors:
            print(f"TensorRT ONNX parser: {error}", file=sys.stderr)
        raise TensorRTError(f"TensorRT could not parse {onnx_path}:\n  " + "\n  ".join(errors or ["(no details)"]))
    return network, parser


def _builder_config(
    trt: ModuleType, builder: Any, network: Any, onnx_path: Path, precision: str, max_batch: int, workspace: int
) -> tuple[Any, tuple[int, int]]:
    """Builder config (workspace, batch profile, precision flags) and the graph's (height, width)."""
    if network.num_inputs != 1:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise TensorRTError(f"{onnx_path}: expected one image input, found {names}")
    image = network.get_input(0)
    static_batch, height, width = _check_nhwc(list(tuple(image.shape)), f"{onnx_path}: input {image.name!r}")
    if static_batch is not None and static_batch != max_batch:
        raise TensorRTError(
            f"{onnx_path} has a fixed batch of {static_batch}; build with max_batch={static_batch} "
            "or export with a dynamic batch"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if static_batch is None:
        profile = builder.create_optimization_profile()
        shape_max = (max_batch, height, width, 3)
        # opt = max: the batcher fills batches under load, which is when speed matters. INT8 calibration
        # also runs at this profile's opt shape, hence calibration batches of max_batch frames.
        profile.set_shape(image.name, (1, height, width, 3), shape_max, shape_max)
        config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        _set_builder_flag(trt, config, "FP16", precision)
    if precision == "int8":
        _set_builder_flag(trt, config, "INT8", precision)
    return config, (height, width)


def _set_builder_flag(trt: ModuleType, config: Any, flag: str, precision: str) -> None:
    value = getattr(trt.BuilderFlag, flag, None)
    if value is None:
        raise TensorRTError(
            f"this TensorRT ({trt_version(trt)}) has no BuilderFlag.{flag}: {precision} engines need TensorRT 10"
        )
    config.set_flag(value)


def _int8_calibrator(
    trt: ModuleType,
    cache_path: Path,
    source: str | None,
    count: int,
    size_hw: tuple[int, int],
    batch: int,
) -> Any:
    """The calibrator of one INT8 build: the cache when TensorRT accepts it, else ``count`` frames of ``source``."""

    def frames() -> np.ndarray:
        if source is None:
            raise TensorRTError(
                f"TensorRT did not accept the calibration cache {cache_path} and no calibration "
                "source was given: delete the cache and build again with a calibration source"
            )
        log.info("INT8 calibration: reading %d frames from %s", count, source)
        return load_calibration_frames(source, count, size_hw)

    return make_calibrator(trt, frames, batch=batch, cache_path=cache_path, device=CALIBRATION_DEVICE)


def make_calibrator(
    trt: ModuleType, frames: Callable[[], np.ndarray], *, batch: int, cache_path: Path, device: str = "cuda"
) -> Any:
    """An ``IInt8EntropyCalibrator2`` fed fixed-size uint8 NHWC batches; its cache lives at ``cache_path``.

    Frames are only read when TensorRT asks for a batch, i.e. when no usable
    calibration cache exists. Errors raised inside TensorRT's callbacks cannot
    propagate through TensorRT, so they are kept in ``.error`` for the caller,
    and a calibration that failed never writes its (incomplete) cache.
    ``device`` is for tests without a GPU; TensorRT needs ``cuda``."""
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.error: Exception | None = None
            self.batches_served = 0
            self._batches: Iterator[np.ndarray] | None = None
            self._device: torch.Tensor | None = None  # one buffer, reused: TensorRT reads it before the next call

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
                    torch.cuda.synchronize()  # TensorRT reads the buffer on its own stream
                self.batches_served += 1
                return [int(self._device.data_ptr())] * len(names)
            except Exception as exc:
                self.error = exc
                return None  # ends calibration; build_engine raises self.error

        def read_calibration_cache(self) -> bytes | None:
            if cache_path.is_file():
                log.info("INT8 calibration: reusing %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if self.error is not None:  # scales from a calibration cut short would be reused by every later build
                log.warning("INT8 calibration failed (%s); not writing %s", self.error, cache_path)
                return
            try:
                write_atomically(cache_path, cache)
                log.info("INT8 calibration cache written: %s", cache_path)
            except Exception as exc:
                self.error = exc

    return EntropyCalibrator()
