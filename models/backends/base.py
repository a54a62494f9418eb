"""The contract every backend implements (types only; the shared implementation is in ``common``)."""

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

    def close(self) -> None:
        """Release the model, session or engine; idempotent. ``infer`` afterwards raises."""
        ...


class BackendClosed(RuntimeError):
    """``infer`` on a backend whose ``close()`` was called."""


def check_images(images: Sequence[np.ndarray]) -> None:
    """A ValueError naming the first image that is not HxWx3 uint8 RGB: anything else would be
    silently cast (floats in [0, 1] become black) or fail deep inside torch with no index."""
    for i, image in enumerate(images):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {i}: expected HxWx3 uint8 RGB, got {image.dtype} {image.shape}")
