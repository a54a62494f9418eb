"""Per-frame, per-stage latency and IoU, in memory that does not grow with run time."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.classes import CLASS_NAMES, NUM_CLASSES
from models.evaluation.metrics import (
    CATEGORY_IOU_LABEL,
    MEAN_IOU_LABEL,
    VOID_IGNORED_LABEL,
    VOID_INCLUDED_LABEL,
    category_iou,
    mean_iou,
    per_class_iou,
    per_class_iou_void_ignored,
    percent,
)

STAGES = ("queue", "preprocess", "inference", "postprocess", "publish", "end_to_end")
PERCENTILES = (50, 95, 99)
# Percentiles come from the most recent samples; a fixed ring keeps memory flat
# over hours of driving (at 30 fps x 8 cameras this is ~4.5 minutes of frames).
RING_SIZE = 65_536
STREAM_RING_SIZE = 4096  # per-stream end-to-end latency: the summary's p50/p99 per camera
# Per-stream stage rings for the viewer's /api/telemetry: recent frames only (about a minute at 15 fps).
STREAM_STAGE_RING_SIZE = 1024


class LatencyRing:
    """The last ``RING_SIZE`` samples of one stage, in milliseconds."""

    def __init__(self, size: int = RING_SIZE) -> None:
        self._values = np.zeros(size, dtype=np.float64)
        self._count = 0
        self.total = 0.0

    def add(self, value_ms: float) -> None:
        self._values[self._count % len(self._values)] = value_ms
        self._count += 1
        self.total += value_ms

    @property
    def count(self) -> int:
        return self._count

    def samples(self) -> np.ndarray:
        return self._values[: min(self._count, len(self._values))]

    def summary(self) -> dict[str, float]:
        data = self.samples()
        if data.size == 0:
            return {}
        out = {f"p{p}": float(np.percentile(data, p)) for p in PERCENTILES}
        out["mean"] = self.total / self._count
        out["max"] = float(data.max())
        return out


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """What the pipeline measured for one published frame (all times in ms)."""

    stream_id: str
    queue_ms: float
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    publish_ms: float
    end_to_end_ms: float
    confusion: np.ndarray | None = None  # 8x8, only when the frame had ground truth


@dataclass
class StreamStats:
    frames: int = 0
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
    has_truth: bool = False
    latency: LatencyRing = field(default_factory=lambda: LatencyRing(STREAM_RING_SIZE))
    stages: dict[str, LatencyRing] = field(
        default_factory=lambda: {stage: LatencyRing(STREAM_STAGE_RING_SIZE) for stage in STAGES})
    first_ns: int | None = None
    last_ns: int | None = None

    def fps(self) -> float:
        if self.first_ns is None or self.last_ns is None or self.frames < 2 or self.last_ns <= self.first_ns:
            return 0.0
        return (self.frames - 1) / ((self.last_ns - self.first_ns) / 1e9)


class Telemetry:
    def __init__(self) -> None:
        self.stages = {stage: LatencyRing() for stage in STAGES}
        self.streams: dict[str, StreamStats] = {}
        self.drops: Counter[str] = Counter()  # "stream:cause" -> frames
        self.errors: list[str] = []
        self.frames_read: dict[str, int] = {}  # per stream, from its source: read = published + dropped later
        self.first_ns: int | None = None
        self.last_ns: int | None = None

    def record(self, rec: FrameRecord, now_ns: int) -> None:
        if self.first_ns is None:
            self.first_ns = now_ns
        self.last_ns = now_ns
        values = (rec.queue_ms, rec.preprocess_ms, rec.inference_ms, rec.postprocess_ms,
                  rec.publish_ms, rec.end_to_end_ms)
        stats = self.streams.setdefault(rec.stream_id, StreamStats())
        for stage, value in zip(STAGES, values, strict=True):
            self.stages[stage].add(value)
            stats.stages[stage].add(value)
        stats.frames += 1
        stats.latency.add(rec.end_to_end_ms)
        stats.first_ns = now_ns if stats.first_ns is None else stats.first_ns
        stats.last_ns = now_ns
        if rec.confusion is not None:
            stats.confusion += rec.confusion
            stats.has_truth = True

    def add_drops(self, stream_id: str, drops: Counter[str]) -> None:
        for cause, count in drops.items():
            if count:
                self.drops[f"{stream_id}:{cause}"] += count

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.streams.values())

    def fps(self) -> float:
        if self.first_ns is None or self.last_ns is None or self.frames < 2:
            return 0.0
        span_s = (self.last_ns - self.first_ns) / 1e9
        return (self.frames - 1) / span_s if span_s > 0 else 0.0

    def confusion(self) -> np.ndarray | None:
        with_truth = [s.confusion for s in self.streams.values() if s.has_truth]
        return sum(with_truth[1:], with_truth[0].copy()) if with_truth else None

    def summary(self, streams: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The end-of-run report; ``streams`` adds the pipeline's per-stream accounting and health."""
        out: dict[str, Any] = {
            "frames": self.frames,
            "fps": self.fps(),
            "latency_ms": {stage: ring.summary() for stage, ring in self.stages.items()},
            "frames_per_stream": {sid: s.frames for sid, s in self.streams.items()},
            "frames_read_per_stream": dict(self.frames_read),
            "dropped": dict(self.drops),
            "dropped_total": sum(self.drops.values()),
            "errors": list(self.errors),
            "streams": {sid: {**self.stream_summary(sid), **extra} for sid, extra in (streams or {}).items()},
        }
        cm = self.confusion()
        if cm is not None:
            out["iou"] = iou_summary(cm)
        return out


    def live_summary(self) -> dict[str, Any]:
        """Per stream, so far: frames, rate, each stage's latency percentiles over its latest
        ``STREAM_STAGE_RING_SIZE`` frames, and IoU with ground truth (the viewer's ``/api/telemetry``;
        cheap enough to serve every second: small rings, no global percentiles)."""
        return {
            "frames": self.frames,
            "fps": round(self.fps(), 2),
            "streams": {
                sid: {
                    "published": s.frames,
                    "fps": round(s.fps(), 2),
                    "latency_ms": {stage: {k: round(v, 2) for k, v in ring.summary().items()}
                                   for stage, ring in s.stages.items() if ring.count},
                    "iou": iou_summary(s.confusion) if s.has_truth else None,
                }
                for sid, s in self.streams.items()
            },
        }

    def stream_summary(self, stream_id: str) -> dict[str, Any]:
        stats = self.streams.get(stream_id) or StreamStats()
        ring = stats.latency.summary()
        return {"published": stats.frames, "fps": round(stats.fps(), 2),
                "latency_ms": {k: round(ring[k], 1) for k in ("p50", "p99")} if ring else {}}


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def iou_summary(cm: np.ndarray) -> dict[str, Any]:
    """Fractions, as ``roadseg eval``'s metrics.json: ``mean_iou`` averages ``per_class`` (void
    included), ``category_iou`` averages ``per_class_void_ignored`` (the official Cityscapes IoUs)."""
    return {
        "mean_iou": _nan_to_none(mean_iou(cm)),
        "category_iou": _nan_to_none(category_iou(cm)),
        "per_class": _by_class(per_class_iou(cm)),
        "per_class_void_ignored": _by_class(per_class_iou_void_ignored(cm)),
    }


def _by_class(values: np.ndarray) -> dict[str, float | None]:
    return {name: _nan_to_none(float(v)) for name, v in zip(CLASS_NAMES, values, strict=True)}


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable end-of-run report."""
    lines = [f"frames: {summary['frames']}   fps: {summary['fps']:.1f}"]
    for stage, stats in summary["latency_ms"].items():
        if stats:
            pcts = "  ".join(f"p{p} {stats[f'p{p}']:8.2f}" for p in PERCENTILES)
            lines.append(f"  {stage:<12} ms  mean {stats['mean']:8.2f}  {pcts}")
    iou = summary.get("iou")
    if iou:
        lines.extend(_iou_lines(iou))
    lines.extend(_stream_line(sid, s) for sid, s in summary.get("streams", {}).items())
    lines.append(f"dropped: {summary['dropped_total']} {summary['dropped'] or ''}".rstrip())
    for error in summary["errors"]:
        lines.append(f"error: {error}")
    return "\n".join(lines)


def _iou_lines(iou: dict[str, Any]) -> list[str]:
    """The same words and units (percent) as ``roadseg eval``'s table."""
    width = len(CATEGORY_IOU_LABEL) + 2
    lines = [f"{MEAN_IOU_LABEL:<{width}}{percent(iou['mean_iou']):>7}   (mean of '{VOID_INCLUDED_LABEL}')",
             f"{CATEGORY_IOU_LABEL:<{width}}{percent(iou['category_iou']):>7}   (mean of '{VOID_IGNORED_LABEL}')"]
    for label, key in ((VOID_INCLUDED_LABEL, "per_class"), (VOID_IGNORED_LABEL, "per_class_void_ignored")):
        values = iou.get(key) or {}
        lines.append(f"  {label}: " + "  ".join(f"{name} {percent(v)}" for name, v in values.items()))
    return lines


def _stream_line(stream_id: str, s: dict[str, Any]) -> str:
    latency = s.get("latency_ms") or {}
    lat = f"p50 {latency['p50']:.1f} p99 {latency['p99']:.1f} ms" if latency else "no latency"
    drops = ", ".join(f"{cause} {n}" for cause, n in sorted(s.get("dropped", {}).items())) or "none"
    line = (f"  stream {stream_id}: {s.get('state', '?')}, frames {s.get('frames_in', 0)} in / "
            f"{s['published']} published, {s['fps']:.1f} fps, {lat}, dropped: {drops}, "
            f"reconnects {s.get('reconnects', 0)}")
    if s.get("lag_ms"):
        line += f", fell {s['lag_ms'] / 1000:.1f} s behind"
    return line

