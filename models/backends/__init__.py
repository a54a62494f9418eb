"""Inference backends behind one interface: ``infer(images) -> BatchOutput``."""

from models.backends.base import BackendTimings, BatchOutput, InferenceBackend
from models.backends.torch_backend import TorchBackend, resolve_device, resolve_precision

__all__ = [
    "BackendTimings",
    "BatchOutput",
    "InferenceBackend",
    "TorchBackend",
    "resolve_device",
    "resolve_precision",
]
