"""OpenVINO backend: runs the same "frames" graph as the ONNX Runtime backend.

The graph (:mod:`models.export.onnx_export`, ``graph="frames"``) takes uint8 RGB frames of any
size and returns uint8 masks at each frame's size: resize, normalisation, the network,
upsampling of the logits and argmax all run inside OpenVINO. It is the very file the
``onnxruntime`` backend uses, found in (or exported to) the same cache by
:func:`models.backends.onnx_backend.open_frames_graph`; OpenVINO reads the ONNX file
directly (no IR conversion, nothing else written). Mixed frame sizes in one batch are
handled as there (:func:`models.backends.onnx_backend.infer_by_size`): one run per size.
The model is compiled once, when the backend is constructed, with dynamic batch, height and
width and the ``LATENCY`` performance hint.

One rewrite, in memory, after reading the file: OpenVINO's CPU plugin ignores ``antialias`` on
the ``linear`` Interpolate its ONNX reader makes of ``Resize(mode="linear", antialias=1)``
(openvinotoolkit/openvino#35893 reports it for cubic; linear is the same here, 2026.4.1): it
shrinks the frame with plain bilinear (up to 36 grey levels off torch's antialiased resize on
a Cityscapes frame, 80 on noise), and DABNet / ESPNetv2 masks at 1024x512 then agree with
torch fp32 on only 99.6 % / 99.2 % of the pixels of two Cityscapes frames. That Interpolate's
mode is set to ``bilinear_pillow``, OpenVINO's antialiased bilinear, which is the filter
torch's ``antialias=True`` copies from Pillow: same to float rounding (0 grey levels off at
2048x1024 -> 1024x512, <= 0.015 at 1920x1080 -> 1024x512); then 0 and 1 of the 2,097,152
pixels of those DABNet masks differ from torch fp32, 0 and 0 for ESPNetv2.

Devices: ``device="auto"`` or ``"cpu"`` run on OpenVINO's ``CPU`` device. Another OpenVINO
device (an Intel GPU or NPU) is chosen with ``options={"ov_device": "GPU"}`` (any name in
``openvino.Core().available_devices``, or its family, e.g. ``GPU`` for ``GPU.0``); only the
CPU has been run here. ``backend.device`` is the OpenVINO device name in lower case.

Precisions: on the CPU ``fp32`` and ``bf16`` (OpenVINO's ``INFERENCE_PRECISION_HINT``; the
export stays fp32). ``auto`` is bf16 where the CPU has native bf16 (the torch backend's test,
:func:`models.backends.torch_backend.cpu_has_native_bf16`, and OpenVINO lists ``BF16`` among
the CPU's capabilities), else fp32. ``bf16`` is refused on a CPU without it: OpenVINO would
silently run fp32 (it has no bf16 emulation). In bf16, going by the CPU plugin's source (not
run here: the development machine has no bf16), OpenVINO keeps the graph's tail after the last
convolution or interpolation (argmax, the finite check) in fp32 and runs the rest in bf16, the
input resize, the category fold's 1x1 convolution and the logits upsampling included, where
torch's bf16 autocast folds and upsamples in fp32. Other devices: whatever their
``OPTIMIZATION_CAPABILITIES`` offer (``fp16`` is ``auto`` where it is).

``options``:

* ``onnx_path``: run this file instead (a fp32 frames graph of the same weights, card and
  input size: its metadata is checked);
* ``cache_dir``: where to look for / put the export (default: :func:`models.store.zoo.cache_dir`);
* ``threads``: inference threads on the CPU (default: OpenVINO's choice for the latency hint,
  one per physical core);
* ``ov_device``: the OpenVINO device, see above.

Timings: ``preprocess_ms`` is the host-side stacking, ``inference_ms`` the inference request
(resize, network, upsampling and argmax included), ``postprocess_ms`` handing the masks out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from models.backends.base import BatchOutput
from models.backends.common import (
    BackendBase,
    BackendError,
    Device,
    GraphLoadError,
    Precision,
    cpu_has_native_bf16,
    positive_int_option,
)
from models.backends.onnx_backend import GraphOutput, check_frames_io, infer_by_size, open_frames_graph
from models.export.artifacts import FINITE, IMAGES, MASKS, ROAD

log = logging.getLogger(__name__)

CPU = "CPU"
# roadseg precision -> (OpenVINO OPTIMIZATION_CAPABILITIES entry, INFERENCE_PRECISION_HINT value)
_PRECISION_NAMES = {"fp32": ("FP32", "f32"), "bf16": ("BF16", "bf16"), "fp16": ("FP16", "f16")}


class OpenVINOBackend(BackendBase):
    name = "openvino"
    DEVICES = (Device.AUTO, Device.CPU)
    PRECISIONS = (Precision.AUTO, Precision.FP32, Precision.BF16, Precision.FP16)
    OPTIONS = ("onnx_path", "cache_dir", "threads", "ov_device")

    DEVICE_HINT = ("OpenVINO does not run on CUDA GPUs; for an Intel GPU or NPU pass device='auto' and "
                   "options={'ov_device': 'GPU'}")

    def _load(self, model: nn.Module, device: Device, precision: Precision, options: dict[str, object]) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendError(f"openvino is not installed ({exc}): pip install 'roadseg[openvino]'") from exc
        self._ov = ov
        self._core = ov.Core()
        self.ov_device = self._resolve_device(device, options.get("ov_device"))
        # Not a Device: an Intel GPU or NPU has no Device member; "cpu" compares equal to Device.CPU.
        self.device = self.ov_device.lower()  # type: ignore[assignment]
        self.precision = self._resolve_precision(precision)
        config = self._compile_config(options)
        # The export is always fp32: bf16/fp16 are OpenVINO's inference precision, not the file's.
        self.onnx_path, self._compiled = open_frames_graph(
            self.name, model, self.card, self.input_hw, options, precision=Precision.FP32,
            load=lambda path: self._compile(path, config),
        )
        self._request: Any = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    # --- construction -------------------------------------------------------------------------------------------

    def _available(self) -> list[str]:
        """OpenVINO device names here, with the family of numbered ones (``GPU`` for ``GPU.0``)."""
        names: list[str] = []
        for device in self._core.available_devices:
            for name in (device.split(".")[0], device):
                if name not in names:
                    names.append(name)
        return names

    def _resolve_device(self, device: Device, ov_device: object) -> str:
        available = self._available()
        if ov_device is None or ov_device == "":
            return CPU
        name = str(ov_device).upper()
        if name not in available:
            raise BackendError(f"OpenVINO device {ov_device!r} is not available here; available: "
                               f"{', '.join(available)}")
        if device == "cpu" and name != CPU:
            raise BackendError(f"device 'cpu' contradicts option ov_device={ov_device!r}; pass device='auto' "
                               "to run on another OpenVINO device")
        return name

    def _capabilities(self) -> list[str]:
        return [str(c) for c in self._core.get_property(self.ov_device, "OPTIMIZATION_CAPABILITIES")]

    def _resolve_precision(self, precision: Precision) -> Precision:
        capabilities = self._capabilities()
        if precision is Precision.AUTO:
            if self.ov_device == CPU:
                return Precision.BF16 if cpu_has_native_bf16() and "BF16" in capabilities else Precision.FP32
            return Precision.FP16 if "FP16" in capabilities else Precision.FP32
        if self.ov_device == CPU and precision == "fp16":
            raise BackendError("precision fp16 is not for the CPU: openvino on the CPU runs fp32 or bf16")
        if _PRECISION_NAMES[precision][0] not in capabilities:
            if self.ov_device == CPU and precision == "bf16":
                raise BackendError(
                    f"precision bf16: this CPU ({self._cpu_name()}) has no native bf16 (OpenVINO runs bf16 only "
                    "with AVX512_BF16 or AMX and would silently run fp32 here); use --precision fp32"
                )
            raise BackendError(f"precision {precision}: OpenVINO device {self.ov_device} does not offer it "
                               f"(its capabilities: {', '.join(capabilities)})")
        return precision

    def _cpu_name(self) -> str:
        try:
            return str(self._core.get_property(CPU, "FULL_DEVICE_NAME"))
        except RuntimeError:
            return "unknown CPU"

    def _compile_config(self, options: dict[str, object]) -> dict[str, Any]:
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": _PRECISION_NAMES[self.precision][1],
        }
        threads = options.get("threads")
        if threads is not None:
            if self.ov_device != CPU:
                raise BackendError(f"option threads is for the CPU; OpenVINO device {self.ov_device} takes none")
            config["INFERENCE_NUM_THREADS"] = positive_int_option(self.name, "threads", threads)
        return config

    def _compile(self, path: Path, config: dict[str, Any]) -> Any:
        try:
            graph = self._core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError / GeneralFailure for unreadable files
            raise GraphLoadError(f"openvino cannot read {path}: {exc}") from exc
        self.provides_road = check_frames_io(path, [name for port in graph.inputs for name in port.get_names()],
                                             [name for port in graph.outputs for name in port.get_names()], self.card)
        antialias_as_pillow(graph)
        try:
            compiled = self._core.compile_model(graph, self.ov_device, config)
        except Exception as exc:
            raise BackendError(f"openvino cannot compile {path.name} for {self.ov_device} "
                               f"({self.precision}): {exc}") from exc
        wanted = _PRECISION_NAMES[self.precision][1]
        actual = self._property(compiled, "INFERENCE_PRECISION_HINT")
        actual_name = actual.get_type_name() if isinstance(actual, self._ov.Type) else wanted  # "?": not reported
        if actual_name != wanted:  # OpenVINO falls back silently where the device lacks the precision
            raise BackendError(f"openvino compiled {path.name} for {self.ov_device} in {actual_name}, not the "
                               f"requested {self.precision}: the device does not run {self.precision}")
        log.info("openvino backend: %s on %s (%s, %s threads)", path.name, self.ov_device, self.precision,
                 self._property(compiled, "INFERENCE_NUM_THREADS"))
        return compiled

    @staticmethod
    def _property(compiled: Any, name: str) -> object:
        try:
            return compiled.get_property(name)
        except RuntimeError:
            return "?"

    # --- inference ----------------------------------------------------------------------------------------------

    def infer(self, images: Sequence[np.ndarray]) -> BatchOutput:
        with self._lock:
            self._check_open()
            return infer_by_size(images, self._run)

    def _run(self, batch: np.ndarray) -> GraphOutput:
        # share_inputs: the stacked batch is read in place (infer is synchronous); the outputs
        # are copies, so the request can run the next size while masks of this one are kept.
        result = self._request.infer({IMAGES: batch}, share_inputs=True)
        return result[MASKS], result[FINITE], result[ROAD] if self.provides_road else None

    def _release(self) -> None:
        """Release the inference request and the compiled model."""
        with self._lock:
            self._request = None
            self._compiled = None


def antialias_as_pillow(graph: Any) -> int:
    """Set every antialiased bilinear Interpolate with half-pixel centres in an ``openvino.Model``
    to mode ``bilinear_pillow`` (see the module docstring: OpenVINO's CPU plugin would run it
    without the antialiasing). Returns how many it changed."""
    changed = 0
    for op in graph.get_ordered_ops():
        if op.get_type_name() != "Interpolate":
            continue
        attributes = op.get_attributes()
        if not attributes.get("antialias") or attributes.get("mode") not in ("linear", "linear_onnx"):
            continue
        if attributes.get("coordinate_transformation_mode") != "half_pixel":
            log.warning("openvino backend: antialiased Interpolate %s has coordinate_transformation_mode %s; left "
                        "as it is (OpenVINO's CPU plugin does not antialias it)", op.get_friendly_name(),
                        attributes.get("coordinate_transformation_mode"))
            continue
        op.set_attribute("mode", "bilinear_pillow")
        changed += 1
    return changed
