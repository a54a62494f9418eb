"""Confusion matrices and IoU over the 8 categories.

IoU definitions (the same everywhere in roadseg):
- ``mean IoU`` averages the per-class IoU over classes that occur in the truth
  or the prediction (void counts as a class);
- ``category IoU`` is the official Cityscapes category metric: pixels whose
  truth is void are ignored and the 7 non-void categories are averaged.
"""

from __future__ import annotations

import numpy as np

from models.classes import NUM_CLASSES, Category


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """``cm[t, p]`` = number of pixels with truth ``t`` predicted as ``p`` (int64)."""
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    index = truth.astype(np.int64).ravel() * num_classes + pred.ravel()
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU per class; NaN where the class is in neither truth nor prediction."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(cm: np.ndarray) -> float:
    ious = per_class_iou(cm)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


def category_iou(cm: np.ndarray) -> float:
    """Cityscapes category IoU: drop void-truth pixels, average the other classes present."""
    ignored = cm.copy()
    ignored[Category.VOID, :] = 0
    ious = per_class_iou(ignored)[Category.VOID + 1 :]
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


def row_normalized(cm: np.ndarray) -> np.ndarray:
    """Each truth row divided by its pixel count (recall per cell); rows without pixels are 0."""
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, cm / np.maximum(rows, 1), 0.0)
