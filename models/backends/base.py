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
    """One batch's results, in input order.

    ``road`` is the drivable-road layer (issue 10), filled only by a backend whose
    ``provides_road`` is True (:class:`models.backends.common.BackendBase`): per image an HxW
    bool mask at the image's own size, the flat pixels of ``masks`` where the road class
    outscores the other flat classes (:func:`models.networks.category_head.split_layers`), so
    always inside ``masks == Category.FLAT``. Every other backend leaves it None (the default):
    nothing changes for them, and a consumer reads ``None`` as "no road layer", as
    :func:`models.drivable.drivable_space` does."""

    masks: list[np.ndarray]  # per input image: HxW uint8 category ids at the image's own size
    valid: list[bool]  # False where the model produced non-finite logits
    timings: BackendTimings
    road: list[np.ndarray | None] | None = None  # per image: HxW bool road layer, None where there is none


class InferenceBackend(Protocol):
    name: str
    model_id: str
    device: str
    precision: str
    # Every registered backend (a BackendBase) also has ``provides_road``: whether infer() fills
    # ``BatchOutput.road``. Not a protocol member, so wrappers and test doubles need not declare it;
    # a consumer that only holds an InferenceBackend reads ``BatchOutput.road`` (None: no road layer).

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
