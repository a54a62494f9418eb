"""Inference backends behind one interface: ``infer(images) -> BatchOutput``.

``common`` holds what they share (the base class, ``Device``/``Precision``, helpers);
``registry`` maps ``--backend`` names (and ``auto``) to classes. Names are resolved lazily so
that importing the package (the CLI does, to list ``--backend`` choices) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BackendBase": "models.backends.common",
    "BackendClosed": "models.backends.base",
    "BackendError": "models.backends.common",
    "BackendTimings": "models.backends.base",
    "BatchOutput": "models.backends.base",
    "Device": "models.backends.common",
    "InferenceBackend": "models.backends.base",
    "Precision": "models.backends.common",
    "TorchBackend": "models.backends.torch_backend",
    "create_backend": "models.backends.registry",
    "resolve_device": "models.backends.torch_backend",
    "resolve_precision": "models.backends.torch_backend",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models.backends' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
