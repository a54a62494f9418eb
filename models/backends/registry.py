"""String-keyed backend factory: ``--backend NAME`` -> an :class:`InferenceBackend`.

Every backend class takes the same arguments, ``(model, card, *, device, precision,
input_size, options)``, and is imported only when chosen, so a machine without
onnxruntime, OpenVINO or TensorRT can still run the torch backend.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported only when a backend is created
    from torch import nn

    from models.backends.base import InferenceBackend
    from models.store.checkpoint import ModelCard

BACKENDS: dict[str, str] = {
    "torch": "models.backends.torch_backend:TorchBackend",
    "torch-cudagraph": "models.backends.torch_cuda:CudaGraphBackend",
    "onnxruntime": "models.backends.onnx_backend:OnnxRuntimeBackend",
    "tensorrt": "models.backends.tensorrt_backend:TensorRTBackend",
    "openvino": "models.backends.openvino_backend:OpenVINOBackend",
}


FINGERPRINT_EXCLUDED = ("metrics", "provenance")  # card fields that do not change an exported graph


class BackendError(ValueError):
    """An unknown backend, or one that cannot run here; the message says why."""


def check_options(backend: str, options: Mapping[str, object] | None, valid: tuple[str, ...]) -> dict[str, object]:
    """A backend's ``options`` as a dict; BackendError naming any it does not take."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise BackendError(f"{backend} backend: unknown options {unknown}; valid: {', '.join(valid) or 'none'}")
    return options


def model_input_hw(card: ModelCard, input_size: tuple[int, int] | None) -> tuple[int, int]:
    """(height, width) a backend feeds the model: ``input_size`` (width, height) or the card's
    native size; BackendError when the model cannot take it."""
    width, height = input_size or card.input.size
    problem = card.input.size_problem(width, height)
    if problem:
        raise BackendError(f"model {card.model_id}: {problem}")
    return height, width


def create_backend(
    name: str,
    model: nn.Module,
    card: ModelCard,
    *,
    device: str = "auto",
    precision: str = "auto",
    input_size: tuple[int, int] | None = None,
    options: Mapping[str, Any] | None = None,
) -> InferenceBackend:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    module_name, _, class_name = BACKENDS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"backend {name!r} is not available here: {exc}") from exc
    backend_class = getattr(module, class_name)
    backend: InferenceBackend = backend_class(
        model, card, device=device, precision=precision, input_size=input_size, options=dict(options or {})
    )
    return backend


def model_fingerprint(model: nn.Module, card: ModelCard, input_size: tuple[int, int]) -> str:
    """Identifies exported artifacts (ONNX files, TensorRT engines) for cache lookups: the
    weights, the model card and the input size. The card's ``metrics`` and ``provenance`` say
    what was measured and where the weights came from, not what the graph computes: eval
    recording new metrics must not invalidate (and rebuild) the engine it just scored."""
    body = json.loads(card.to_json())
    for volatile in FINGERPRINT_EXCLUDED:
        body.pop(volatile, None)
    digest = hashlib.sha256()
    digest.update(json.dumps(body, sort_keys=True).encode())
    digest.update(json.dumps(list(input_size)).encode())
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
