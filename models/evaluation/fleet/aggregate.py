"""Summing the fleet's result rows: per drive and overall, each frame counted once.

Every number comes from confusion matrices summed exactly as ``roadseg eval`` sums them (int64,
one :func:`models.evaluation.metrics.confusion_matrix` per frame), and every metric from the same
:mod:`models.evaluation.metrics` functions, so the same frames give eval's numbers digit for digit.

A row is keyed by (drive, frame): when Ray retries work a lost worker had started, a frame can come
back twice; the second is counted in ``duplicates`` and nowhere else. A drive with any error (a
frame that would not decode, a video that would not open, a failed inference) is *failed*: it is
reported with its errors and left out of the overall numbers (its frames still count in throughput).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.classes import CLASS_NAMES, NUM_CLASSES
from models.evaluation import metrics
from models.evaluation.fleet.drives import Drive
from models.evaluation.fleet.worker import frame_confusion, rank_key
from models.evaluation.result import PanelSample, finite_or_none

MAX_ERRORS_PER_DRIVE = 20  # kept in the report; the count is always exact
TIMELINE_BINS = 60


@dataclass
class DriveTally:
    """What one drive's rows added up to."""

    confusion: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
    road_confusion: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.int64))
    road_frames: int = 0
    ignored: int = 0
    frames: int = 0  # done (decoded and inferred)
    scored: int = 0  # of which with ground truth
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    invalid: list[str] = field(default_factory=list)


@dataclass
class WorstFrame:
    rank: tuple[float, int, int]
    drive: str
    frame: int
    name: str
    mean_iou: float
    pixel_accuracy: float
    sample: PanelSample | None


class FleetAggregate:
    """Feed it result rows (:meth:`add`, in any order, duplicates allowed), then read the totals."""

    def __init__(self, drives: list[Drive], panels: int = 4) -> None:
        self.drives = drives
        self.panels = panels
        self.tallies = [DriveTally() for _ in drives]
        for drive, tally in zip(drives, self.tallies, strict=True):
            if drive.error is not None:
                self._error(tally, drive.error)
        self.seen: set[tuple[int, int]] = set()
        self.duplicates = 0
        self.frames: list[dict[str, Any]] = []  # one record per frame done, for frames.jsonl
        self.worst: list[WorstFrame] = []
        self.actors: dict[str, dict[str, Any]] = {}

    def add(self, row: dict[str, Any]) -> bool:
        """Count one result row; False (and counted in ``duplicates``) when its frame was counted already."""
        drive, frame = int(row["drive"]), int(row["frame"])
        if (drive, frame) in self.seen:
            self.duplicates += 1
            return False
        self.seen.add((drive, frame))
        tally = self.tallies[drive]
        if row["error"]:
            self._error(tally, f"frame {row['name'] or frame}: {row['error']}" if frame >= 0 else str(row["error"]))
            return True  # a drive that never decoded, a frame that did not or was not inferred: not a frame done
        tally.frames += 1
        actor = self.actors.setdefault(str(row["actor"]), {"frames": 0, "busy_s": 0.0, "pid": int(row["pid"])})
        actor["frames"] += 1
        actor["busy_s"] += float(row["busy_ms"]) / 1000
        record = {"drive": self.drives[drive].name, "frame": frame, "name": str(row["name"]),
                  "scored": bool(row["scored"]), "mean_iou": finite_or_none(float(row["mean_iou"])),
                  "category_iou": finite_or_none(float(row["category_iou"])),
                  "pixel_accuracy": finite_or_none(float(row["pixel_accuracy"])),
                  "decode_ms": round(float(row["decode_ms"]), 3), "model_ms": round(float(row["model_ms"]), 3),
                  "score_ms": round(float(row["score_ms"]), 3), "done_at": float(row["done_at"]),
                  "actor": str(row["actor"]), "error": str(row["error"]) or None}
        self.frames.append(record)
        if not row["valid"]:
            tally.invalid.append(str(row["name"]))
        if row["scored"]:
            tally.confusion += frame_confusion(row)
            tally.ignored += int(row["ignored"])
            tally.scored += 1
            if row["road_cm"]:
                tally.road_confusion += np.frombuffer(row["road_cm"], np.int64).reshape(2, 2)
                tally.road_frames += 1
            self._consider_worst(drive, frame, row)
        return True

    def _error(self, tally: DriveTally, message: str) -> None:
        tally.error_count += 1
        if len(tally.errors) < MAX_ERRORS_PER_DRIVE:
            tally.errors.append(message)

    def _consider_worst(self, drive: int, frame: int, row: dict[str, Any]) -> None:
        """Keep the ``panels`` worst frames by category IoU; tiles come with every row that can be one."""
        rank = rank_key(float(row["category_iou"]), drive, frame)
        if self.panels <= 0 or math.isinf(rank[0]):
            return
        if len(self.worst) >= self.panels and rank >= self.worst[-1].rank:
            return
        sample = None
        if row["tile_h"]:
            shape = (int(row["tile_h"]), int(row["tile_w"]))
            sample = PanelSample(
                name=f"{self.drives[drive].name}/{row['name']}",
                image=np.frombuffer(row["tile_image"], np.uint8).reshape(*shape, 3),
                truth=np.frombuffer(row["tile_truth"], np.uint8).reshape(shape),
                prediction=np.frombuffer(row["tile_pred"], np.uint8).reshape(shape),
                mean_iou=float(row["mean_iou"]), pixel_accuracy=float(row["pixel_accuracy"]))
        entry = WorstFrame(rank, self.drives[drive].name, frame, str(row["name"]), float(row["mean_iou"]),
                           float(row["pixel_accuracy"]), sample)
        self.worst = sorted([*self.worst, entry], key=lambda w: w.rank)[: self.panels]

    # --- totals ----------------------------------------------------------------------------------

    def failed(self, number: int) -> bool:
        return self.tallies[number].error_count > 0

    def overall(self) -> tuple[np.ndarray, np.ndarray | None, int, int]:
        """(confusion, road confusion or None, ignored pixels, frames scored) of the drives that did not fail."""
        cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
        road = np.zeros((2, 2), np.int64)
        ignored = scored = road_frames = 0
        for number, tally in enumerate(self.tallies):
            if self.failed(number):
                continue
            cm += tally.confusion
            road += tally.road_confusion
            ignored += tally.ignored
            scored += tally.scored
            road_frames += tally.road_frames
        return cm, (road if road_frames else None), ignored, scored

    def drive_reports(self) -> list[dict[str, Any]]:
        reports = []
        for number, (drive, tally) in enumerate(zip(self.drives, self.tallies, strict=True)):
            entry: dict[str, Any] = {
                **drive.describe(),
                "status": "failed" if self.failed(number) else "ok",
                "frames": tally.frames,
                "frames_scored": tally.scored,
                "errors": list(tally.errors),
                "error_count": tally.error_count,
                "invalid_frames": list(tally.invalid),
            }
            if drive.expected is not None and tally.frames != drive.expected and not self.failed(number):
                entry["note"] = f"{tally.frames} frames decoded, the container declares {drive.expected}"
            if tally.scored:
                entry.update(metric_fields(tally.confusion, tally.ignored))
                if tally.road_frames:
                    entry["road_iou"] = finite_or_none(metrics.road_iou(tally.road_confusion))
            reports.append(entry)
        return reports


def metric_fields(cm: np.ndarray, ignored: int) -> dict[str, Any]:
    """The metrics of one confusion matrix, named as in ``roadseg eval``'s metrics.json (NaN: null)."""
    return {
        "classes": list(CLASS_NAMES),
        "per_class_iou": _by_class(metrics.per_class_iou(cm)),  # void included; mean_iou averages these
        "per_class_iou_void_ignored": _by_class(metrics.per_class_iou_void_ignored(cm)),  # category_iou's
        "dice": _by_class(metrics.dice(cm)),
        "mean_iou": finite_or_none(metrics.mean_iou(cm)),
        "category_iou": finite_or_none(metrics.category_iou(cm)),
        "pixel_accuracy": finite_or_none(metrics.pixel_accuracy(cm)),
        "confusion": cm.astype(np.int64).tolist(),
        "ignored_pixels": int(ignored),
        "confusion_normalized": [[round(float(v), 6) for v in row] for row in metrics.row_normalized(cm)],
        "truth_pixel_share": _by_class(cm.sum(axis=1) / max(int(cm.sum()), 1)),
    }


def _by_class(values: np.ndarray) -> dict[str, float | None]:
    return {name: finite_or_none(float(v)) for name, v in zip(CLASS_NAMES, values, strict=True)}


def percentiles(values: list[float]) -> dict[str, float | None]:
    """mean, p50, p90, p99 and max of ``values`` in ms (None when there are none)."""
    if not values:
        return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    array = np.asarray(values, np.float64)
    return {"mean": round(float(array.mean()), 3),
            **{f"p{q}": round(float(np.percentile(array, q)), 3) for q in (50, 90, 99)},
            "max": round(float(array.max()), 3)}


def throughput_timeline(done_at: list[float], start: float, bins: int = TIMELINE_BINS,
                        min_bin_s: float = 1.0) -> list[list[float]]:
    """[[seconds since start (bin end), frames/s in the bin]...] over the run: at most ``bins`` bins,
    none shorter than ``min_bin_s`` (a rate over a few milliseconds says nothing)."""
    if not done_at:
        return []
    span = max(max(done_at) - start, 1e-6)
    width = max(span / bins, min_bin_s)
    bins = max(1, math.ceil(span / width))
    counts = np.bincount(np.minimum(((np.asarray(done_at) - start) / width).astype(int), bins - 1).clip(0),
                         minlength=bins)
    return [[round((i + 1) * width, 3), round(float(c) / width, 3)] for i, c in enumerate(counts)]
