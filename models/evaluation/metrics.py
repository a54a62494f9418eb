"""Confusion matrices and IoU over the 8 categories.

Truth pixels equal to :data:`~models.classes.IGNORE` (Cityscapes labels ignored in
evaluation that belong to a category: parking, caravan...) are never counted.

IoU definitions (the same everywhere in roadseg), two per category from one matrix:
- *void included* (:func:`per_class_iou`): void is a class like the others, so a
  non-void prediction on void truth is a false positive; ``mean IoU`` averages these
  over the 8 classes that occur in the truth or the prediction;
- *void ignored* (:func:`per_class_iou_void_ignored`): pixels whose truth is void are
  dropped first, which is the official Cityscapes per-category IoU
  (cityscapesScripts ``getIouScoreForCategory``); ``category IoU`` averages these over
  the 7 non-void categories present.
"""

from __future__ import annotations

import numpy as np

from models.classes import IGNORE, NUM_CLASSES, Category

# Words and units shared by `roadseg eval` and `roadseg run`, so the two print the same things.
MEAN_IOU_LABEL = "mean IoU (8 classes, void included)"
CATEGORY_IOU_LABEL = "category IoU (Cityscapes: 7 categories, void ignored)"
ROAD_IOU_LABEL = "road IoU (drivable-road layer, void ignored)"
VOID_INCLUDED_LABEL = "IoU % void included"
VOID_IGNORED_LABEL = "IoU % void ignored"
PERCENT_DECIMALS = 2  # enough to tell 89.60 from 89.61: the official score prints 3 digits of a fraction


def percent(value: float | None) -> str:
    """A fraction as a percentage with :data:`PERCENT_DECIMALS` digits; ``n/a`` for None or NaN."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{100.0 * value:.{PERCENT_DECIMALS}f}"


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """``cm[t, p]`` = number of pixels with truth ``t`` predicted as ``p`` (int64); truth
    :data:`~models.classes.IGNORE` pixels are left out."""
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    cells = num_classes * num_classes
    index = truth.astype(np.int64).ravel() * num_classes + pred.ravel()
    # One bincount: IGNORE truth lands in bins past the matrix and is cut off with them.
    counts = np.bincount(index, minlength=cells)
    if counts[cells : IGNORE * num_classes].any():
        raise ValueError(f"truth or prediction holds ids outside 0..{num_classes - 1} (truth may also be {IGNORE})")
    return counts[:cells].reshape(num_classes, num_classes)


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU per class; NaN where the class is in neither truth nor prediction."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(cm: np.ndarray) -> float:
    ious = per_class_iou(cm)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


def per_class_iou_void_ignored(cm: np.ndarray) -> np.ndarray:
    """The official Cityscapes IoU of each category: void-truth pixels dropped before TP, FP and FN
    are counted (a prediction of void on other truth stays a miss). NaN for void itself and for
    categories in neither truth nor prediction."""
    kept = cm.copy()
    kept[Category.VOID, :] = 0
    ious = per_class_iou(kept)
    ious[Category.VOID] = np.nan
    return ious


def category_iou(cm: np.ndarray) -> float:
    """Cityscapes category IoU: the mean of :func:`per_class_iou_void_ignored` over the categories present."""
    ious = per_class_iou_void_ignored(cm)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


def pixel_accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def dice(cm: np.ndarray) -> np.ndarray:
    """Dice (F1) per class, ``2 TP / (2 TP + FP + FN)`` = ``2 IoU / (1 + IoU)``;
    NaN where the class is in neither truth nor prediction."""
    tp = np.diag(cm).astype(np.float64)
    total = cm.sum(axis=0) + cm.sum(axis=1)  # 2 TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * tp / total, np.nan)


def road_confusion(road_truth: np.ndarray, road: np.ndarray) -> np.ndarray:
    """2x2 ``cm[truth, predicted]`` of the road layer (0 not road, 1 road); truth
    :data:`~models.classes.IGNORE` pixels (void and the other Cityscapes ignoreInEval labels,
    parking among them) are left out, as in the Cityscapes road class IoU."""
    return confusion_matrix(road_truth, road.astype(np.uint8), num_classes=2)


def road_iou(cm: np.ndarray) -> float:
    """IoU of road in a :func:`road_confusion` matrix; NaN when there is road in neither truth nor prediction."""
    return float(per_class_iou(cm)[1])


def row_normalized(cm: np.ndarray) -> np.ndarray:
    """Each truth row divided by its pixel count (recall per cell); rows without pixels are 0."""
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, cm / np.maximum(rows, 1), 0.0)
