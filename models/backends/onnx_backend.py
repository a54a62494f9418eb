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
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from models.backends.base import BackendTimings, BatchOutput, check_images
from models.backends.registry import BackendError, check_options, model_fingerprint, model_input_hw
from models.store.checkpoint import ModelCard

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
OPTIONS = ("onnx_path", "cache_dir", "threads")
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


class _LoadError(BackendError):
    """The file itself does not load (as opposed to a provider or contract problem)."""


def _ms_since(start_ns: int) -> float:
    return (time.monotonic_ns() - start_ns) / 1e6


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(
        self,
        model: nn.Module,
        card: ModelCard,
        *,
        device: str = "auto",
        precision: str = "auto",
        input_size: tuple[int, int] | None = None,
        options: dict[str, object] | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"onnxruntime is not installed ({exc}): pip install 'roadseg[onnx]'") from exc
        from models.export import onnx_export as export

        options = check_options(self.name, options, OPTIONS)
        self._ort = ort
        self.device = self._resolve_device(device)
        self.precision = self._resolve_precision(precision, self.device)
        self.model_id = card.model_id
        self.card = card
        self.input_hw = model_input_hw(card, input_size)
        height, width = self.input_hw
        fingerprint = model_fingerprint(model, card, (width, height))
        explicit = options.get("onnx_path")
        if explicit:
            self.onnx_path = Path(str(explicit)).expanduser()
            self._check_explicit(self.onnx_path, fingerprint, (width, height))
            self._session = self._open(self.onnx_path, options)
            return
        cache = Path(str(options["cache_dir"])).expanduser() if options.get("cache_dir") else None
        self.onnx_path = export.export_path(model, card, (width, height), graph="frames", precision=self.precision,
                                            cache=cache)
        if not export.is_current(self.onnx_path, fingerprint):
            log.info("onnxruntime backend: exporting %s to %s", card.model_id, self.onnx_path)
            export.export_onnx(model, card, self.onnx_path, input_size=(width, height), graph="frames",
                               precision=self.precision)
        try:
            self._session = self._open(self.onnx_path, options)
        except _LoadError:
            # A cached export that no longer loads (written by another roadseg, or damaged): make it again.
            log.warning("onnxruntime backend: cached %s does not load; exporting again", self.onnx_path)
            export.export_onnx(model, card, self.onnx_path, input_size=(width, height), graph="frames",
                               precision=self.precision)
            self._session = self._open(self.onnx_path, options)

    # --- construction -------------------------------------------------------------------------------------------

    def _resolve_device(self, device: str) -> str:
        if device not in DEVICES:
            raise BackendError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
        has_cuda = CUDA_PROVIDER in self._ort.get_available_providers()
        if device == "auto":
            return "cuda" if has_cuda else "cpu"
        if device == "cuda" and not has_cuda:
            raise BackendError(
                f"device 'cuda' requested but this onnxruntime ({self._ort.__version__}) has no {CUDA_PROVIDER}: "
                "install onnxruntime-gpu instead of onnxruntime"
            )
        return device

    @staticmethod
    def _resolve_precision(precision: str, device: str) -> str:
        if precision not in PRECISIONS:
            raise BackendError(f"unknown precision {precision!r} for onnxruntime; valid: {', '.join(PRECISIONS)}")
        if precision == "auto":
            return "fp16" if device == "cuda" else "fp32"
        if precision == "bf16":
            raise BackendError(
                "onnxruntime has no bf16 kernels for these models (its CPU provider offers bf16 only for ARM "
                "GEMMs); use --precision fp32 with onnxruntime, or the torch backend for bf16"
            )
        if precision == "fp16" and device == "cpu":
            raise BackendError("precision fp16 is for CUDA; onnxruntime on the CPU runs fp32")
        return precision

    def _check_explicit(self, path: Path, fingerprint: str, size: tuple[int, int]) -> None:
        from models.export import onnx_export as export

        if not path.is_file():
            raise BackendError(f"ONNX file {path}: no such file")
        try:
            meta = export.read_metadata(path)
        except Exception as exc:  # protobuf DecodeError and friends: not an ONNX file
            raise BackendError(f"ONNX file {path}: cannot be read ({type(exc).__name__}: {exc})") from exc
        width, height = size
        if meta.get("graph") != "frames":
            raise BackendError(
                f"ONNX file {path} is not a roadseg frames graph (graph={meta.get('graph')!r}); export one with "
                f"`roadseg export --model ... --format onnx --graph frames`"
            )
        if meta.get("fingerprint") != fingerprint or meta.get("input_size") != f"{width}x{height}":
            raise BackendError(
                f"ONNX file {path} was exported from other weights, card or input size "
                f"({meta.get('model_id')} {meta.get('input_size')}, fingerprint {meta.get('fingerprint')}) "
                f"than {self.model_id} {width}x{height} (fingerprint {fingerprint})"
            )
        if meta.get("precision", "fp32") != self.precision:
            raise BackendError(
                f"ONNX file {path} is {meta.get('precision')}; the backend was asked for {self.precision}"
            )

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
            threads = int(str(options.get("threads") or usable_cores()))
            session_options.intra_op_num_threads = max(1, threads)
            session_options.inter_op_num_threads = 1
            providers = [CPU_PROVIDER]
        try:
            session = ort.InferenceSession(str(path), session_options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise _LoadError(f"onnxruntime cannot load {path}: {exc}") from exc
        if self.device == "cuda" and CUDA_PROVIDER not in session.get_providers():
            raise BackendError(
                f"onnxruntime could not start {CUDA_PROVIDER} (CUDA/cuDNN libraries missing or mismatched); "
                "its log above says why"
            )
        names = {value.name for value in session.get_outputs()}
        if {value.name for value in session.get_inputs()} != {"images"} or not {"masks", "finite"} <= names:
            raise BackendError(f"{path}: not a roadseg frames graph (inputs images, outputs masks and finite)")
        log.info("onnxruntime backend: %s on %s (%s)", path.name, self.device, self.precision)
        return session

    # --- inference ----------------------------------------------------------------------------------------------

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        height, width = self.input_hw
        for batch in batch_sizes:
            self.infer([np.zeros((height, width, 3), np.uint8)] * batch)

    def infer(self, images: Sequence[np.ndarray]) -> BatchOutput:
        masks: list[np.ndarray] = [np.empty(0, np.uint8)] * len(images)
        valid = [True] * len(images)
        preprocess_ms = inference_ms = postprocess_ms = 0.0
        groups: dict[tuple[int, ...], list[int]] = {}
        check_images(images)
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        for indices in groups.values():
            start = time.monotonic_ns()
            batch = np.ascontiguousarray(np.stack([images[i] for i in indices]))
            preprocess_ms += _ms_since(start)

            start = time.monotonic_ns()
            labels, finite = self._session.run(["masks", "finite"], {"images": batch})
            inference_ms += _ms_since(start)

            start = time.monotonic_ns()
            for j, index in enumerate(indices):
                masks[index] = labels[j]
                valid[index] = bool(finite[j])
            postprocess_ms += _ms_since(start)
        return BatchOutput(masks, valid, BackendTimings(preprocess_ms, inference_ms, postprocess_ms))
