"""TensorRT backend: runs an engine built by ``roadseg export --format tensorrt``.

Engines are looked up in the cache by model fingerprint, GPU, TensorRT version
and precision (:mod:`models.export.tensorrt_build`), or given as
``options["engine_path"]``; a missing engine is an error, never a build on the
first frame. Frames are uploaded from pinned memory, resized to the model
resolution on the GPU (uint8 NHWC, what the exported graph takes), run with
``execute_async_v3`` on a torch CUDA stream, and the logits are upsampled to
each frame's size and argmaxed on the GPU like the torch backend does.

Options: ``engine_path`` (use this engine file), ``max_batch`` (pick the cached
engine built for this batch; default: the largest), ``cache_dir`` (default:
:func:`models.store.zoo.cache_dir`), ``model_name`` (the ``--model`` spelling used in
the "build it with" hint; default: the card's model id).

:meth:`TensorRTBackend.close` frees the execution context, engine and device
buffers at once instead of whenever the garbage collector gets to them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.backends.base import BackendTimings, BatchOutput, check_images
from models.backends.common import (
    BackendBase,
    BackendError,
    Device,
    Precision,
    group_by_shape,
    ms_since,
    positive_int_option,
)
from models.backends.tensorrt_runtime import TensorRTError, import_tensorrt, resize_nhwc_uint8, trt_logger
from models.backends.torch_backend import pinned_stack
from models.errors import ArtifactError
from models.export.artifacts import ArtifactKind, backend_artifact

log = logging.getLogger(__name__)

_LOGITS_NAMES = ("logits", "scores")
_MASK_NAMES = ("masks", "mask", "labels")


def _torch_dtype(trt: ModuleType, dtype: Any) -> torch.dtype:
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT8: torch.int8,
        trt.DataType.UINT8: torch.uint8,
        trt.DataType.BOOL: torch.bool,
    }
    for name, torch_type in (("INT64", torch.int64), ("BF16", torch.bfloat16)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = torch_type
    if dtype not in table:
        raise BackendError(f"TensorRT engine tensor type {dtype} is not supported by the tensorrt backend")
    return table[dtype]


class TensorRTBackend(BackendBase):
    name = "tensorrt"
    DEVICES = (Device.AUTO, Device.CUDA)
    PRECISIONS = (Precision.AUTO, Precision.FP32, Precision.FP16, Precision.INT8)
    OPTIONS = ("engine_path", "max_batch", "cache_dir", "model_name")
    DEVICE_HINT = "tensorrt runs on a CUDA GPU"

    def _load(self, model: nn.Module, device: Device, precision: Precision, options: dict[str, object]) -> None:
        self.device = Device.CUDA
        self.precision = Precision.FP16 if precision is Precision.AUTO else precision
        if options.get("max_batch") is not None:
            options["max_batch"] = positive_int_option(self.name, "max_batch", options["max_batch"])
        try:
            self._trt = trt = import_tensorrt()
            path = backend_artifact(ArtifactKind.TENSORRT_ENGINE, model, self.card, self.input_hw,
                                    precision=self.precision, options=options)
        except (TensorRTError, ArtifactError) as exc:
            raise BackendError(str(exc)) from exc
        log.info("tensorrt backend: engine %s", path)
        self.engine_path = path
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._runtime = trt.Runtime(trt_logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            hint = str(options.get("model_name") or self.card.model_id)
            height, width = self.input_hw
            raise BackendError(
                f"TensorRT could not load {path} (built by another TensorRT version or for another GPU, or "
                f"corrupt; its log above says which): delete it and build it again with `roadseg export "
                f"--model {hint} --format tensorrt --precision {self.precision} --size {width}x{height}`"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"TensorRT could not create an execution context for {path} (out of GPU memory?)")
        self._bind(path)
        self._stream = torch.cuda.Stream(device=self._device)
        self._lock = threading.Lock()

    # --- construction -------------------------------------------------------------------------------------------

    def _bind(self, path: Path) -> None:
        """Check the engine's I/O against what this backend feeds it and allocate device buffers."""
        trt, engine, context = self._trt, self._engine, self._context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise BackendError(
                f"{path}: expected one image input and an output, found inputs {inputs}, outputs {outputs}"
            )
        self._input_name = name = inputs[0]
        if engine.get_tensor_dtype(name) != trt.DataType.UINT8:
            raise BackendError(f"{path}: input {name!r} is {engine.get_tensor_dtype(name)}, expected uint8 RGB NHWC")
        shape = tuple(engine.get_tensor_shape(name))
        height, width = self.input_hw
        if len(shape) != 4 or shape[3] != 3 or tuple(shape[1:3]) != (height, width):
            raise BackendError(
                f"{path}: input {name!r} has shape {list(shape)}, expected (batch, {height}, {width}, 3); "
                "the engine was built for another input size"
            )
        if shape[0] == -1:
            _, _, largest = engine.get_tensor_profile_shape(name, 0)  # (min, opt, max) of profile 0
            self.max_batch = int(largest[0])
        else:
            self.max_batch = int(shape[0])
        self._input = torch.empty((self.max_batch, height, width, 3), dtype=torch.uint8, device=self._device)
        if not context.set_input_shape(name, tuple(self._input.shape)):
            raise BackendError(f"{path}: TensorRT refused input shape {tuple(self._input.shape)}")
        context.set_tensor_address(name, self._input.data_ptr())

        self._outputs: dict[str, torch.Tensor] = {}
        for out in outputs:
            out_shape = tuple(context.get_tensor_shape(out))
            if any(d < 0 for d in out_shape):
                raise BackendError(f"{path}: output {out!r} has unresolved shape {list(out_shape)}")
            buffer = torch.empty(out_shape, dtype=_torch_dtype(trt, engine.get_tensor_dtype(out)), device=self._device)
            context.set_tensor_address(out, buffer.data_ptr())
            self._outputs[out] = buffer
        self._output_name = self._pick_output(outputs)
        result = self._outputs[self._output_name]
        self._logits = result.is_floating_point()
        what = f"{path}: output {self._output_name!r} has shape {list(result.shape)}"
        if self._logits and result.dim() != 4:
            raise BackendError(f"{what}; expected NCHW logits")
        if not self._logits and (result.dim() not in (3, 4) or (result.dim() == 4 and result.shape[1] != 1)):
            raise BackendError(f"{what}; expected NHW masks")

    def _pick_output(self, outputs: list[str]) -> str:
        for preferred in (*_LOGITS_NAMES, *_MASK_NAMES):
            if preferred in outputs:
                return preferred
        floats = [n for n in outputs if self._outputs[n].is_floating_point()]
        return (floats or outputs)[0]

    # --- inference ----------------------------------------------------------------------------------------------

    def _release(self) -> None:
        """Release the execution context, the engine, the runtime and the device buffers, in the
        order TensorRT needs (a context before its engine)."""
        with self._lock:
            self._context = None
            self._engine = None
            self._runtime = None
            self._outputs.clear()
            self._input = torch.empty(0, dtype=torch.uint8)

    def infer(self, images: Sequence[np.ndarray]) -> BatchOutput:
        check_images(images)
        masks: list[np.ndarray] = [np.empty(0, np.uint8)] * len(images)
        valid = [True] * len(images)
        timings = [0.0, 0.0, 0.0]
        # Same-sized frames next to each other: one upload and one resize per size.
        order = [i for _, indices in group_by_shape(images) for i in indices]
        with self._lock, torch.inference_mode(), torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            self._check_open()
            for start in range(0, len(order), self.max_batch):
                chunk = order[start : start + self.max_batch]
                self._run_chunk(images, chunk, masks, valid, timings)
        return BatchOutput(masks, valid, BackendTimings(*timings))

    def _run_chunk(
        self,
        images: Sequence[np.ndarray],
        chunk: list[int],
        masks: list[np.ndarray],
        valid: list[bool],
        timings: list[float],
    ) -> None:
        start = time.monotonic_ns()
        count = len(chunk)
        runs = _runs_by_shape([images[i].shape for i in chunk])
        for offset, length in runs:
            host = pinned_stack([images[i] for i in chunk[offset : offset + length]])
            target = self._input[offset : offset + length]
            if tuple(host.shape[1:3]) == self.input_hw:
                target.copy_(host, non_blocking=True)
            else:
                upload = host.to(self._device, non_blocking=True)
                target.copy_(resize_nhwc_uint8(upload, self.input_hw))
        self._stream.synchronize()
        timings[0] += ms_since(start)

        start = time.monotonic_ns()
        shape = (count, *self.input_hw, 3)
        if not self._context.set_input_shape(self._input_name, shape):
            raise RuntimeError(f"TensorRT refused input shape {shape}")
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {self.engine_path.name}")
        self._stream.synchronize()
        timings[1] += ms_since(start)

        start = time.monotonic_ns()
        result = self._outputs[self._output_name][:count]  # the engine wrote the first `count` rows
        if self._logits:
            finite = torch.isfinite(result).flatten(1).all(dim=1).tolist()
            for j, index in enumerate(chunk):
                valid[index] = bool(finite[j])
        for offset, length in runs:
            part = result[offset : offset + length]
            size = tuple(images[chunk[offset]].shape[:2])
            if self._logits:
                if tuple(part.shape[-2:]) != size:
                    part = F.interpolate(part.float(), size=size, mode="bilinear", align_corners=False)
                labels = part.argmax(dim=1)
            else:
                labels = part.reshape(length, *part.shape[-2:])
                if tuple(labels.shape[-2:]) != size:
                    labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0]
            host_labels = labels.to(torch.uint8).cpu().numpy()
            for j in range(length):
                masks[chunk[offset + j]] = host_labels[j]
        timings[2] += ms_since(start)


def _runs_by_shape(shapes: list[tuple[int, ...]]) -> list[tuple[int, int]]:
    """(offset, length) of consecutive equal shapes."""
    runs: list[tuple[int, int]] = []
    for i, shape in enumerate(shapes):
        if runs and shapes[runs[-1][0]] == shape:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs
