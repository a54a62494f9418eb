"""String-keyed backend factory: ``--backend NAME`` -> an :class:`InferenceBackend`.

Every backend class takes the same arguments, ``(model, card, *, device, precision,
input_size, options)`` (:class:`models.backends.common.BackendBase`), and is imported only
when chosen, so a machine without onnxruntime, OpenVINO or TensorRT can still run the torch
backend.

``auto`` picks the fastest backend that is installed and can run the requested device and
precision, in the order measured on DABNet 1024x512 (README, benchmarks): on the CPU OpenVINO
(fp32 4.1 frames/s on a 2-core AVX2 EPYC, bf16 3.9x ONNX Runtime fp32 on a 2-core AMX Xeon),
then ONNX Runtime (3.4), then torch (2.6); on a CUDA GPU a TensorRT engine built beforehand,
then torch. A candidate that cannot run (not installed, no engine, precision it lacks) is
skipped with the reason logged; when none can, the error lists every reason.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from models.backends.common import BackendError, Device, Precision

if TYPE_CHECKING:  # torch is imported only when a backend is created
    from torch import nn

    from models.backends.base import InferenceBackend
    from models.store.checkpoint import ModelCard

log = logging.getLogger(__name__)

AUTO = "auto"
BACKENDS: dict[str, str] = {
    "torch": "models.backends.torch_backend:TorchBackend",
    "torch-cudagraph": "models.backends.torch_cuda:CudaGraphBackend",
    "onnxruntime": "models.backends.onnx_backend:OnnxRuntimeBackend",
    "tensorrt": "models.backends.tensorrt_backend:TensorRTBackend",
    "openvino": "models.backends.openvino_backend:OpenVINOBackend",
}
BACKEND_CHOICES: tuple[str, ...] = (AUTO, *BACKENDS)
# Fastest first, as measured (module docstring). torch-cudagraph is left out: it is faster than torch
# eager only at small batches and has not been run on a GPU yet.
AUTO_ORDER = {
    Device.CPU: ("openvino", "onnxruntime", "torch"),
    Device.CUDA: ("tensorrt", "torch"),
}
# Options a user passes for one backend mean nothing to another: ``auto`` takes none.


def create_backend(
    name: str,
    model: nn.Module,
    card: ModelCard,
    *,
    device: Device | str = Device.AUTO,
    precision: Precision | str = Precision.AUTO,
    input_size: tuple[int, int] | None = None,
    options: Mapping[str, Any] | None = None,
) -> InferenceBackend:
    if name == AUTO:
        if options:
            raise BackendError(f"backend auto takes no options (got {sorted(options)}); name the backend they are for")
        return _create_fastest(model, card, device=device, precision=precision, input_size=input_size)
    backend_class = backend_class_of(name)
    backend: InferenceBackend = backend_class(
        model, card, device=device, precision=precision, input_size=input_size, options=dict(options or {})
    )
    return backend


def backend_class_of(name: str) -> Any:
    """The class registered as ``name``; BackendError listing the valid names, or saying what is
    missing when its module (or the runtime it imports) is not installed."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; valid: {', '.join(BACKEND_CHOICES)}")
    module_name, _, class_name = BACKENDS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"backend {name!r} is not available here: {exc}") from exc
    return getattr(module, class_name)


def auto_candidates(device: Device | str) -> tuple[str, ...]:
    """The backends ``auto`` tries for ``device``, fastest first (``auto``: CUDA's list when torch sees a GPU)."""
    wanted = Device(device) if device in tuple(Device) else None
    if wanted is None:
        raise BackendError(f"unknown device {device!r}; valid: {', '.join(Device)}")
    if wanted is Device.AUTO:
        import torch

        wanted = Device.CUDA if torch.cuda.is_available() else Device.CPU
    return AUTO_ORDER[wanted]


def _create_fastest(
    model: nn.Module, card: ModelCard, *, device: Device | str, precision: Precision | str,
    input_size: tuple[int, int] | None,
) -> InferenceBackend:
    reasons: list[str] = []
    for name in auto_candidates(device):
        try:
            backend: InferenceBackend = backend_class_of(name)(
                model, card, device=device, precision=precision, input_size=input_size
            )
        except BackendError as exc:
            log.info("backend auto: not %s (%s)", name, exc)
            reasons.append(f"{name}: {exc}")
            continue
        log.info("backend auto: %s on %s (%s)", name, backend.device, backend.precision)
        return backend
    raise BackendError("backend auto: no backend can run this here; " + "; ".join(reasons))
