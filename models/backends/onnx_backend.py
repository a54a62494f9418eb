"""ONNX Runtime backend: runs the "frames" graph of :mod:`models.export.onnx_export`.

The graph takes uint8 RGB frames as they come (NHWC, any size) and does the
whole torch-backend path itself: antialiased resize to the model size,
normalisation, the network, bilinear upsampling of the logits to the frame
size, argmax and the finite check. So on CUDA, resize, normalisation and
argmax run on the GPU and only the uint8 mask comes back; on the CPU nothing
runs in Python but stacking the batch. Same-sized frames share one run;
frames of another size get their own run (the graph takes one size per call).
Timings: ``preprocess_ms`` is the host-side stacking, ``inference_ms`` the
session run (resize, network, upsampling and argmax included),
``postprocess_ms`` handing the masks out.

The graph is found in the cache by model fingerprint
(``<cache>/exports/<model_id>-<fingerprint>-<W>x<H>.onnx``, see
:func:`models.export.onnx_export.export_path`) or exported there when constructing the
backend (a few seconds), never on a frame. ``options``:

* ``onnx_path``: run this file instead (it must be a frames graph exported
  from the same weights, card and input size: its metadata is checked);
* ``cache_dir``: where to look for / put the export (default: :func:`models.store.zoo.cache_dir`);
* ``threads``: intra-op threads on the CPU (default: the cores this process may use).

The OpenVINO backend (:mod:`models.backends.openvino_backend`) runs the same file from the
same cache: finding or exporting it (:func:`open_frames_graph`) and running a mixed-size batch
(:func:`infer_by_size`) are this module's functions, shared.

Precisions: CPU ``fp32`` only. ONNX Runtime's CPU provider has no bf16
convolution kernels on x86 (bf16 fast-math exists only for ARM GEMMs), so
``bf16`` is refused rather than emulated; use the torch backend for bf16.
CUDA: ``fp16`` (default; the network part of the graph converted to fp16) or
``fp32``. The CUDA path is written against onnxruntime-gpu's documented
``CUDAExecutionProvider`` but has NOT been run here (no GPU on the development
machine): treat it as unverified until the parity tests pass on a GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from torch import nn

from models.backends.base import BackendTimings, BatchOutput, check_images
from models.backends.common import (
    BackendBase,
    BackendError,
    Device,
    GraphLoadError,
    Precision,
    ms_since,
    positive_int_option,
    usable_cores,
)
from models.errors import ArtifactError
from models.export.artifacts import FINITE, IMAGES, MASKS, ROAD, ArtifactKind, backend_artifact
from models.store.checkpoint import ModelCard

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


T = TypeVar("T")
# One run of the frames graph: masks (B, H, W) uint8, finite (B,) bool, road (B, H, W) bool or None.
GraphOutput = tuple[np.ndarray, np.ndarray, np.ndarray | None]


class OnnxRuntimeBackend(BackendBase):
    name = "onnxruntime"
    PRECISIONS = (Precision.AUTO, Precision.FP32, Precision.FP16, Precision.BF16)
    OPTIONS = ("onnx_path", "cache_dir", "threads")

    def _load(self, model: nn.Module, device: Device, precision: Precision, options: dict[str, object]) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"onnxruntime is not installed ({exc}): pip install 'roadseg[onnx]'") from exc
        self._ort = ort
        self.device = self._resolve_device(device)
        self.precision = self._resolve_precision(precision, self.device)
        self.onnx_path, self._session = open_frames_graph(
            self.name, model, self.card, self.input_hw, options, precision=self.precision,
            load=lambda path: self._open(path, options),
        )

    # --- construction -------------------------------------------------------------------------------------------

    def _resolve_device(self, device: Device) -> Device:
        has_cuda = CUDA_PROVIDER in self._ort.get_available_providers()
        if device is Device.AUTO:
            return Device.CUDA if has_cuda else Device.CPU
        if device is Device.CUDA and not has_cuda:
            raise BackendError(
                f"device 'cuda' requested but this onnxruntime ({self._ort.__version__}) has no {CUDA_PROVIDER}: "
                "install onnxruntime-gpu instead of onnxruntime"
            )
        return device

    @staticmethod
    def _resolve_precision(precision: Precision, device: Device) -> Precision:
        if precision is Precision.AUTO:
            return Precision.FP16 if device is Device.CUDA else Precision.FP32
        if precision is Precision.BF16:
            raise BackendError(
                "onnxruntime has no bf16 kernels for these models (its CPU provider offers bf16 only for ARM "
                "GEMMs); use --precision fp32 with onnxruntime, or the torch backend for bf16"
            )
        if precision is Precision.FP16 and device is Device.CPU:
            raise BackendError("precision fp16 is for CUDA; onnxruntime on the CPU runs fp32")
        return precision

    def _open(self, path: Path, options: dict[str, object]) -> Any:
        ort = self._ort
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.log_severity_level = 3  # ORT's warnings about unused initialisers are noise here
        if self.device == "cuda":
            providers: list[Any] = [(CUDA_PROVIDER, {"device_id": 0, "cudnn_conv_use_max_workspace": "1"}),
                                    CPU_PROVIDER]
        else:
            threads = options.get("threads")
            count = usable_cores() if threads is None else positive_int_option(self.name, "threads", threads)
            session_options.intra_op_num_threads = count
            session_options.inter_op_num_threads = 1
            providers = [CPU_PROVIDER]
        try:
            session = ort.InferenceSession(str(path), session_options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise GraphLoadError(f"onnxruntime cannot load {path}: {exc}") from exc
        if self.device == "cuda" and CUDA_PROVIDER not in session.get_providers():
            raise BackendError(
                f"onnxruntime could not start {CUDA_PROVIDER} (CUDA/cuDNN libraries missing or mismatched); "
                "its log above says why"
            )
        self.provides_road = check_frames_io(path, [value.name for value in session.get_inputs()],
                                             [value.name for value in session.get_outputs()], self.card)
        log.info("onnxruntime backend: %s on %s (%s)", path.name, self.device, self.precision)
        return session

    # --- inference ----------------------------------------------------------------------------------------------

    def infer(self, images: Sequence[np.ndarray]) -> BatchOutput:
        return infer_by_size(images, self._run)

    def _run(self, batch: np.ndarray) -> GraphOutput:
        self._check_open()
        if self.provides_road:
            labels, finite, road = self._session.run([MASKS, FINITE, ROAD], {IMAGES: batch})
            return labels, finite, road
        labels, finite = self._session.run([MASKS, FINITE], {IMAGES: batch})
        return labels, finite, None

    def _release(self) -> None:
        self._session = None


# --- shared with the OpenVINO backend -----------------------------------------------------------------------------


def open_frames_graph(
    backend: str,
    model: nn.Module,
    card: ModelCard,
    input_hw: tuple[int, int],
    options: Mapping[str, object],
    *,
    precision: str,
    load: Callable[[Path], T],
) -> tuple[Path, T]:
    """The frames graph of ``model`` at ``input_hw`` (height, width) and what ``load`` made of it.

    ``options["onnx_path"]``: that file, checked to be a frames graph of these weights, card, size
    and ``precision``. Else the cached export (``options["cache_dir"]`` or the default cache),
    exported there first when missing or stale, and once more when ``load`` raises
    :class:`GraphLoadError` on it (written by another roadseg, or damaged)."""
    def find(refresh: bool) -> Path:
        try:
            return backend_artifact(ArtifactKind.ONNX_FRAMES, model, card, input_hw, precision=precision,
                                    options=options, refresh=refresh)
        except ArtifactError as exc:
            raise BackendError(str(exc)) from exc

    path = find(refresh=False)
    try:
        return path, load(path)
    except GraphLoadError:
        if options.get("onnx_path"):
            raise
        log.warning("%s backend: cached %s does not load; exporting again", backend, path)
        path = find(refresh=True)
        return path, load(path)


def check_frames_io(path: Path, inputs: Sequence[str], outputs: Sequence[str], card: ModelCard) -> bool:
    """BackendError unless a loaded graph has the frames graph's input and outputs; whether it
    also has the road layer's output for a card that lists the layer (an export from before
    the layer existed has none: it runs, without the road layer)."""
    if set(inputs) != {IMAGES} or not {MASKS, FINITE} <= set(outputs):
        raise BackendError(f"{path}: not a roadseg frames graph (inputs images, outputs masks and finite)")
    if card.has_road and ROAD not in outputs:
        log.warning("%s has no road output (exported before the road layer): no drivable-road layer; "
                    "delete it to export again", path)
    return card.has_road and ROAD in outputs


def infer_by_size(images: Sequence[np.ndarray], run: Callable[[np.ndarray], GraphOutput]) -> BatchOutput:
    """One ``run`` (NHWC uint8 batch -> masks, finite flags, road layers or None) per frame size,
    in order of first appearance; each frame's mask at its own size. Timings: ``preprocess_ms``
    the stacking, ``inference_ms`` the runs, ``postprocess_ms`` handing the masks out."""
    masks: list[np.ndarray] = [np.empty(0, np.uint8)] * len(images)
    valid = [True] * len(images)
    roads: list[np.ndarray | None] | None = None
    preprocess_ms = inference_ms = postprocess_ms = 0.0
    groups: dict[tuple[int, ...], list[int]] = {}
    check_images(images)
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    for indices in groups.values():
        start = time.monotonic_ns()
        batch = np.ascontiguousarray(np.stack([images[i] for i in indices]))
        preprocess_ms += ms_since(start)

        start = time.monotonic_ns()
        labels, finite, road = run(batch)
        inference_ms += ms_since(start)

        start = time.monotonic_ns()
        if road is not None and roads is None:
            roads = [None] * len(images)
        for j, index in enumerate(indices):
            masks[index] = labels[j]
            valid[index] = bool(finite[j])
            if roads is not None and road is not None:
                roads[index] = road[j]
        postprocess_ms += ms_since(start)
    return BatchOutput(masks, valid, BackendTimings(preprocess_ms, inference_ms, postprocess_ms), roads)
