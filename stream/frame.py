"""The immutable frame that flows from a source through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _freeze(array: np.ndarray) -> np.ndarray:
    # Frames are shared across threads and consumers (batcher, viewer, IoU);
    # read-only arrays turn an accidental in-place edit into an immediate error.
    if array.flags.writeable:
        array.setflags(write=False)
    return array


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded camera frame.

    ``capture_ns`` is ``time.monotonic_ns()`` when the frame became available to
    us (latency is measured from it); ``capture_wall_ns`` is ``time.time_ns()`` at
    the same moment, for correlating with other hosts' logs only.
    """

    source_id: str
    seq: int
    capture_ns: int
    capture_wall_ns: int
    image: np.ndarray  # HxWx3 uint8 RGB
    truth: np.ndarray | None = None  # HxW uint8 category ids (models.classes.Category)
    name: str = ""  # where it came from (file name, frame index) for error messages and logs
    # The source's own timestamp of this frame, ns: a recording's media position, an RTSP stream's
    # presentation time. On the source's clock, not ours (None where the source has none).
    media_ns: int | None = None

    def __post_init__(self) -> None:
        image = self.image
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"frame {self.source_id}#{self.seq}: image must be HxWx3 uint8, "
                f"got {image.dtype} {image.shape}"
            )
        _freeze(image)
        if self.truth is not None:
            if self.truth.dtype != np.uint8 or self.truth.shape != image.shape[:2]:
                raise ValueError(
                    f"frame {self.source_id}#{self.seq}: truth must be uint8 {image.shape[:2]}, "
                    f"got {self.truth.dtype} {self.truth.shape}"
                )
            _freeze(self.truth)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])
