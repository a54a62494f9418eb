"""Inference backends behind one interface: ``infer(images) -> BatchOutput``.

Names are resolved lazily so that importing the package (the CLI does, to list
``--backend`` choices) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BackendTimings": "models.backends.base",
    "BatchOutput": "models.backends.base",
    "InferenceBackend": "models.backends.base",
    "TorchBackend": "models.backends.torch_backend",
    "resolve_device": "models.backends.torch_backend",
    "resolve_precision": "models.backends.torch_backend",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models.backends' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
