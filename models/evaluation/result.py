"""What one evaluation measured (shared by ``roadseg eval`` and its report, so neither
imports the other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.evaluation import metrics

# road_layer: the road layer's reference pass (models.evaluation.road), not part of elapsed_s; 0 where the
# backend emits the road layer itself (its cost is then in postprocess).
TIMING_KEYS = ("decode_wait", "preprocess", "inference", "postprocess", "scoring", "road_layer")


def finite_or_none(value: float) -> float | None:
    """A JSON-safe number: NaN/inf become None (null)."""
    return round(float(value), 6) if np.isfinite(value) else None


@dataclass(frozen=True)
class PanelSample:
    """One frame kept (downscaled) for an ``image | truth | prediction`` panel."""

    name: str  # the frame's stem, e.g. frankfurt_000000_000294
    image: np.ndarray  # RGB uint8, downscaled
    truth: np.ndarray  # categories, downscaled with nearest neighbour
    prediction: np.ndarray  # categories, downscaled with nearest neighbour
    mean_iou: float  # of this frame alone
    pixel_accuracy: float


@dataclass
class EvalResult:
    """Everything one evaluation measured; the metrics are derived from ``confusion``."""

    model_spec: str
    model_id: str
    backend: str  # the inference engine that produced the masks (torch, onnxruntime, ...)
    card_input_size: tuple[int, int]  # (width, height) the model card declares
    input_size: tuple[int, int]  # (width, height) the model actually ran at
    device: str
    precision: str
    root: str
    split: str
    city: str | None
    frames: int
    batch: int
    confusion: np.ndarray  # int64 [truth, prediction] pixel counts, summed over all frames
    ignored_pixels: int  # truth IGNORE (Cityscapes ignoreInEval labels of a category): in no metric
    elapsed_s: float  # first decode to last score (model load, warm-up and the road layer's pass excluded)
    timing_ms: dict[str, float]  # mean ms per image for each of TIMING_KEYS
    per_frame: list[dict[str, Any]] = field(default_factory=list)  # name, mean_iou, pixel_accuracy
    invalid_frames: list[str] = field(default_factory=list)  # frames whose logits were not finite
    samples: list[PanelSample] = field(default_factory=list)
    road_confusion: np.ndarray | None = None  # 2x2 int64 [truth, predicted] road; None: road layer not scored
    road_note: str = ""  # how the road layer was obtained, or why it was not scored
    # Derived in __post_init__:
    per_class_iou: np.ndarray = field(init=False)  # void included (void truth is a class)
    per_class_iou_void_ignored: np.ndarray = field(init=False)  # official Cityscapes per category; void NaN
    dice: np.ndarray = field(init=False)
    mean_iou: float = field(init=False)  # mean of per_class_iou: 8 classes, void counted as a class
    category_iou: float = field(init=False)  # mean of per_class_iou_void_ignored: the official category IoU
    pixel_accuracy: float = field(init=False)
    confusion_normalized: np.ndarray = field(init=False)  # rows sum to 1 (0 for absent truth classes)
    images_per_s: float = field(init=False)
    ms_per_image: float = field(init=False)
    road_iou: float | None = field(init=False)  # None: not scored (see road_note); NaN: no road anywhere

    def __post_init__(self) -> None:
        cm = self.confusion
        self.per_class_iou = metrics.per_class_iou(cm)
        self.per_class_iou_void_ignored = metrics.per_class_iou_void_ignored(cm)
        self.dice = metrics.dice(cm)
        self.mean_iou = metrics.mean_iou(cm)
        self.category_iou = metrics.category_iou(cm)
        self.pixel_accuracy = metrics.pixel_accuracy(cm)
        self.confusion_normalized = metrics.row_normalized(cm)
        self.images_per_s = self.frames / self.elapsed_s if self.elapsed_s > 0 else float("nan")
        self.ms_per_image = 1000.0 * self.elapsed_s / self.frames if self.frames else float("nan")
        self.road_iou = metrics.road_iou(self.road_confusion) if self.road_confusion is not None else None
