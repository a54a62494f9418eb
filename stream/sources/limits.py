"""Frame-size limits applied at the source, on its decode thread.

One 8000x8000 image makes a 19-class network allocate gigabytes of logits; the
limit turns that into a downscaled frame (default) or a counted drop, before the
frame ever reaches the batcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np

DEFAULT_MAX_FRAME_SIZE = (4096, 4096)  # (width, height): above 4K UHD, below what a CPU box can segment
DROP_CAUSE_OVERSIZE = "oversize"


class OversizePolicy(StrEnum):
    DOWNSCALE = "downscale"  # fit inside the limit, keeping the aspect ratio
    REJECT = "reject"  # drop the frame, counted as ``oversize``


class FrameTooLarge(Exception):
    def __init__(self, name: str, width: int, height: int, limit: tuple[int, int]) -> None:
        super().__init__(f"{name}: {width}x{height} exceeds the frame limit {limit[0]}x{limit[1]}")


@dataclass(frozen=True)
class FrameLimits:
    max_width: int = DEFAULT_MAX_FRAME_SIZE[0]
    max_height: int = DEFAULT_MAX_FRAME_SIZE[1]
    policy: OversizePolicy = OversizePolicy.DOWNSCALE

    def __post_init__(self) -> None:
        if self.max_width < 1 or self.max_height < 1:
            raise ValueError(f"frame limit must be positive, got {self.max_width}x{self.max_height}")

    def fit(self, name: str, image: np.ndarray, truth: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The image (and its truth) within the limit; FrameTooLarge when the policy rejects."""
        height, width = image.shape[:2]
        if width <= self.max_width and height <= self.max_height:
            return image, truth
        if self.policy is OversizePolicy.REJECT:
            raise FrameTooLarge(name, width, height, (self.max_width, self.max_height))
        scale = min(self.max_width / width, self.max_height / height)
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        # INTER_AREA averages instead of aliasing; labels must stay labels, so nearest for truth.
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        small_truth = None if truth is None else cv2.resize(truth, size, interpolation=cv2.INTER_NEAREST)
        return small, small_truth
