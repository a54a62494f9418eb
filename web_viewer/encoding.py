"""Per-stream encoder state of :class:`web_viewer.hub.ViewerHub`: the pending frame slot, the frame
period it measures, and the running cost of encoding (``stats["encode"]``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from web_viewer.render import Picture, RenderedFrame

DEFAULT_FRAME_PERIOD_S = 1 / 15  # until a stream's interval between offers is measured
PERIOD_SMOOTHING = 0.2  # exponential moving average weight of the newest offer interval
MAX_PERIOD_SAMPLE_S = 1.0  # a pause (a stalled camera) is not a frame period

Job = tuple[int, np.ndarray, np.ndarray, dict[str, Any]]


@dataclass(slots=True)
class StreamSlot:
    """Per-stream state: at most one pending frame and one cached packet."""

    offered: int = 0
    pending: Job | None = None
    # The newest encoded packets by tier, so a viewer that connects while a stream is idle still sees it.
    last_packets: dict[int, bytes] = field(default_factory=dict)
    error_logged: bool = False
    last_offer_s: float | None = None
    period_s: float = DEFAULT_FRAME_PERIOD_S  # smoothed interval between offers

    def observe_offer(self, now_s: float) -> None:
        if self.last_offer_s is not None:
            interval = min(now_s - self.last_offer_s, MAX_PERIOD_SAMPLE_S)
            self.period_s += PERIOD_SMOOTHING * (interval - self.period_s)
        self.last_offer_s = now_s


@dataclass(slots=True)
class EncodeCost:
    """Running totals of what encoding cost, for ``stats["encode"]`` (means in ms and bytes)."""

    frames: int = 0
    resize_ms: float = 0.0
    mask_ms: float = 0.0
    mask_bytes: int = 0
    jpeg: dict[Picture, list[float]] = field(default_factory=dict)  # picture -> [count, ms, bytes]

    def add(self, rendered: RenderedFrame) -> None:
        self.frames += 1
        self.resize_ms += rendered.resize_ms
        self.mask_ms += rendered.mask_ms
        self.mask_bytes += rendered.mask_bytes
        for picture, ms in rendered.jpeg_ms.items():
            totals = self.jpeg.setdefault(picture, [0, 0.0, 0])
            totals[0] += 1
            totals[1] += ms
            totals[2] += rendered.jpeg_bytes[picture]

    def summary(self, widest: int) -> dict[str, Any]:
        """Means per frame; ``jpeg`` by picture label (:meth:`Picture.label`: ``"40"``, ``"40@480w"``),
        best first."""
        n = max(self.frames, 1)
        return {
            "frames": self.frames,
            "resize_ms": round(self.resize_ms / n, 3),
            "mask_png_ms": round(self.mask_ms / n, 3),
            "mask_png_bytes": round(self.mask_bytes / n),
            "jpeg": {picture.label(widest): {"frames": int(count), "ms": round(ms / count, 3),
                                             "bytes": round(size / count)}
                     for picture, (count, ms, size) in sorted(
                         self.jpeg.items(), key=lambda item: (item[0].max_width, item[0].quality), reverse=True)},
        }
