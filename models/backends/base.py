"""The contract every backend (torch, ONNX Runtime, TensorRT) implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class BackendTimings:
    """Wall time of one batch in each backend stage, on the monotonic clock."""

    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float


@dataclass(frozen=True, slots=True)
class BatchOutput:
    masks: list[np.ndarray]  # per input image: HxW uint8 category ids at the image's own size
    valid: list[bool]  # False where the model produced non-finite logits
    timings: BackendTimings


class InferenceBackend(Protocol):
    name: str
    model_id: str
    device: str
    precision: str

    def infer(self, images: Sequence[np.ndarray]) -> BatchOutput:
        """Blocking: HxWx3 uint8 RGB images (sizes may differ) -> one mask each."""
        ...

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None: ...
