"""Per-camera static void masks: pixels that never show the scene.

The ego vehicle's bonnet, a mounting bracket or a lens border sit at fixed pixels
of one camera. Models trained on 19 Cityscapes classes never predict void, so
without this they would label the bonnet "vehicle" or "flat" and a planner would
see an obstacle that is always there. The mask file is an image whose non-zero
pixels are void; it is scaled (nearest) to each frame size once and cached.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from models.classes import Category
from stream.per_stream import per_stream_paths


class VoidMaskError(ValueError):
    """A void mask file that cannot be used; the message names it."""


class VoidMask:
    def __init__(self, path: Path) -> None:
        self.path = path
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise VoidMaskError(f"void mask {path}: not a readable image")
        self._source = image > 0
        self._scaled: dict[tuple[int, int], np.ndarray] = {}
        self._lock = threading.Lock()  # scaled copies are built on the post-processing thread

    def for_shape(self, shape: tuple[int, int]) -> np.ndarray:
        with self._lock:
            if shape not in self._scaled:
                height, width = shape
                scaled = cv2.resize(self._source.astype(np.uint8), (width, height),
                                    interpolation=cv2.INTER_NEAREST)
                self._scaled[shape] = scaled.astype(bool)
            return self._scaled[shape]

    def apply(self, mask: np.ndarray) -> np.ndarray:
        """Set the masked pixels to void; returns ``mask`` (modified in place)."""
        mask[self.for_shape(mask.shape[:2])] = Category.VOID
        return mask


def parse_void_masks(specs: tuple[str, ...]) -> dict[str, VoidMask]:
    """``STREAM=PATH`` items -> loaded masks; errors name the item."""
    masks: dict[str, VoidMask] = {}
    for stream_id, path in per_stream_paths(specs, "void mask", "front=bonnet.png", VoidMaskError).items():
        if not Path(path).is_file():
            raise VoidMaskError(f"void mask {stream_id + '=' + path!r}: no such file {path}")
        masks[stream_id] = VoidMask(Path(path))
    return masks
