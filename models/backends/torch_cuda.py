"""torch-cudagraph backend: the torch backend with the model replayed from CUDA graphs.

At construction one graph is captured per batch size in
``options["batch_sizes"]`` (default 1, 2, 4, 8), each with its own static input
and output tensors. A batch of another size is padded up to the next captured
size (the padding rows' outputs are dropped); a batch larger than the largest
size runs as several replays. Preprocessing (pinned host memory, non-blocking
upload, resize and normalisation on the GPU) and postprocessing (logits
upsampling, argmax) are the torch backend's; only the model runs in the graph,
under fp16 autocast by default, channels_last.

``options["compile"] = True`` uses ``torch.compile(mode="reduce-overhead")``
(which records its own CUDA graphs) instead of hand-captured graphs, with the
same padding to fixed batch sizes so nothing recompiles after warmup. The
constructor only compiles: torch.compile keeps its CUDA graphs per thread, so
:meth:`CudaGraphBackend.warmup` records them, and must be called from the
thread that will call ``infer`` (the pipeline does: both run on its inference
thread). Without it the first calls of each size record them instead.

The drivable-road layer, for a model that has one, is captured with the categories
(:meth:`~models.networks.category_head.CategoryFold.forward_native_layers`: the road margin
indexes its sibling classes with a slice, no host data, so capture can take it) and split by the
torch backend's postprocessing. Not yet run on a GPU: should that forward fail to capture, the
backend logs why and captures the category-only forward instead (``provides_road`` False, as
before), so a GPU user gets masks either way.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.backends.base import BackendTimings, BatchOutput, check_images
from models.backends.common import BackendError, Device, Precision, group_by_shape, ms_since
from models.backends.torch_backend import DTYPES, TorchBackend
from models.networks.category_head import inference_forward

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 2, 4, 8)
WARMUP_ITERATIONS = 3  # eager runs before capture: cuDNN/cuBLAS pick kernels and allocate workspaces
NEEDS_GPU = "torch-cudagraph needs a CUDA GPU"


def plan_batches(count: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    """``(frames, graph size)`` per replay for a batch of ``count`` frames: full replays of the
    largest size, then the rest padded up to the smallest captured size that holds it."""
    if not sizes:
        raise ValueError("no captured batch sizes")
    ordered = sorted(sizes)
    largest = ordered[-1]
    plan: list[tuple[int, int]] = []
    remaining = count
    while remaining > largest:
        plan.append((largest, largest))
        remaining -= largest
    if remaining > 0:
        plan.append((remaining, next(size for size in ordered if size >= remaining)))
    return plan


def parse_batch_sizes(value: object) -> tuple[int, ...]:
    """``(1, 2, 4)``, ``[4, 1]`` or ``"1,2,4"`` -> sorted unique positive sizes."""
    try:
        items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        sizes = sorted({int(str(item).strip()) for item in items})
    except (TypeError, ValueError):
        raise BackendError(f"torch-cudagraph: batch_sizes must be positive integers, got {value!r}") from None
    if not sizes or sizes[0] < 1:
        raise BackendError(f"torch-cudagraph: batch_sizes must be positive integers, got {value!r}")
    return tuple(sizes)


def _parse_flag(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@dataclass
class _Captured:
    size: int
    input: torch.Tensor  # static, (size, 3, H, W) float32 channels_last, normalised
    graph: torch.cuda.CUDAGraph | None  # None with torch.compile
    output: torch.Tensor | None  # static logits of the graph
    replays: int = 0


class CudaGraphBackend(TorchBackend):
    name = "torch-cudagraph"

    DEVICES = (Device.AUTO, Device.CUDA)
    OPTIONS = ("batch_sizes", "compile")
    DEVICE_HINT = f"{NEEDS_GPU}; on the CPU use --backend torch"

    def _load(self, model: nn.Module, device: Device, precision: Precision, options: dict[str, object]) -> None:
        self.batch_sizes = parse_batch_sizes(options.get("batch_sizes", DEFAULT_BATCH_SIZES))
        self.compiled = _parse_flag(options.get("compile", False))
        if not torch.cuda.is_available():
            raise BackendError(f"{NEEDS_GPU}, and torch sees none; on CPU use --backend torch")
        # Graphs hold raw pointers to the weights: own a copy, so moving or freeing the caller's model
        # (another backend's .to(device), say) cannot pull memory from under a captured graph.
        super()._load(copy.deepcopy(model), Device.CUDA, precision, {})
        self._lock = threading.Lock()
        self._graphs: dict[int, _Captured] = {}
        start = time.monotonic()
        try:
            self._capture_all()
        except RuntimeError as exc:
            if not self.provides_road:
                raise
            log.warning("torch-cudagraph: the road layer's forward did not capture (%s); "
                        "capturing the categories only (no road/ messages)", exc)
            self.provides_road = False
            self._net_forward = inference_forward(self._model)
            self._capture_all()
        log.info(
            "torch-cudagraph: %s batch sizes %s ready in %.1f s",
            "compiled" if self.compiled else "captured",
            list(self.batch_sizes),
            time.monotonic() - start,
        )

    def _capture_all(self) -> None:
        """One graph (or compiled size) per batch size, of the current ``_net_forward``."""
        self._graphs.clear()
        self._runner: Callable[[torch.Tensor], torch.Tensor] = self._net_forward
        if self.compiled:
            self._runner = torch.compile(self._net_forward, mode="reduce-overhead", dynamic=False)
        with torch.inference_mode():
            for size in sorted(self.batch_sizes, reverse=True):
                self._graphs[size] = self._capture(size)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if self.precision != "fp32":
            # No autocast weight cache: cached casts made during capture would live outside the graph's pool.
            autocast = torch.autocast("cuda", dtype=DTYPES[self.precision], cache_enabled=False)
        with autocast:
            return self._runner(x)

    def _capture(self, size: int) -> _Captured:
        height, width = self.input_hw
        static = torch.zeros((size, 3, height, width), device=self._torch_device)
        static = static.contiguous(memory_format=torch.channels_last)
        if self.compiled:
            # Compiles this size, nothing more: torch.compile records its CUDA graphs per thread, and
            # graphs recorded here would never be replayed by the pipeline's inference thread.
            torch.compiler.cudagraph_mark_step_begin()
            self._forward(static)
            torch.cuda.synchronize()
            return _Captured(size, static, None, None)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_ITERATIONS):
                self._forward(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: pipeline threads allocating pinned memory meanwhile must not invalidate the capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = self._forward(static)
        torch.cuda.synchronize()
        return _Captured(size, static, graph, output)

    def _replay(self, captured: _Captured, part: torch.Tensor) -> torch.Tensor:
        count = part.shape[0]
        captured.input[:count].copy_(part)
        if count < captured.size:
            captured.input[count:].zero_()  # padding rows: computed, then dropped
        if captured.graph is not None and captured.output is not None:
            captured.graph.replay()
            output = captured.output
        else:
            torch.compiler.cudagraph_mark_step_begin()
            output = self._forward(captured.input)
        captured.replays += 1
        return output[:count]

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Run every captured size (and any other size asked for). In compile mode this records
        torch.compile's CUDA graphs in the calling thread, which must be the thread that infers."""
        height, width = self.input_hw
        rounds = WARMUP_ITERATIONS if self.compiled else 1  # torch.compile: warm up, record, replay
        for size in sorted(set(batch_sizes) | set(self.batch_sizes)):
            for _ in range(rounds):
                self.infer([np.zeros((height, width, 3), np.uint8)] * size)

    def _release(self) -> None:
        """Drop the captured graphs (their static buffers and memory pools) with the model."""
        with self._lock:
            self._graphs.clear()
            self._runner = None  # type: ignore[assignment]
        super()._release()

    def infer(self, images: Sequence[np.ndarray]) -> BatchOutput:
        self._check_open()
        check_images(images)
        if not images:
            return BatchOutput([], [], BackendTimings(0.0, 0.0, 0.0))
        with self._lock, torch.inference_mode():
            start = time.monotonic_ns()
            groups = list(group_by_shape(images))
            batch = torch.cat([self._preprocess([images[i] for i in idx]) for _, idx in groups])
            self._sync()
            preprocess_ms = ms_since(start)

            start = time.monotonic_ns()
            plan = plan_batches(len(images), self.batch_sizes)
            parts: list[torch.Tensor] = []
            offset = 0
            for count, size in plan:
                output = self._replay(self._graphs[size], batch[offset : offset + count])
                # The next replay of the same graph overwrites its output: keep a copy when there is one.
                parts.append(output if len(plan) == 1 else output.clone())
                offset += count
            logits = parts[0] if len(parts) == 1 else torch.cat(parts)
            self._sync()
            inference_ms = ms_since(start)

            start = time.monotonic_ns()
            masks, valid, road = self._postprocess(logits, groups, len(images))
            postprocess_ms = ms_since(start)
        return BatchOutput(masks, valid, BackendTimings(preprocess_ms, inference_ms, postprocess_ms), road)
