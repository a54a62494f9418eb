"""The per-frame work after inference: IoU, mask encoding, message header."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from decision_bridge.road import RoadHeader, encode_road
from decision_bridge.schema import Encoding, IoUReport, MaskHeader, StageTimings, encode_mask
from models.backends.base import BackendTimings
from models.classes import Category
from models.drivable import DrivableSpace, drivable_space
from models.evaluation.metrics import confusion_matrix, per_class_iou
from stream.frame import Frame
from stream.health import StreamHealth
from stream.telemetry import FrameRecord
from stream.void_mask import VoidMask

if TYPE_CHECKING:  # the camera geometry (calibration) of streams started with --camera
    from stream.geometry import BevOut, StreamCalibration

NS_PER_MS = 1e6
INVALID_NONFINITE = "nonfinite_logits"
INVALID_STALE = "stale_frame"


@dataclass(frozen=True, slots=True)
class Inferred:
    """One frame's mask as it leaves the inference stage."""

    frame: Frame
    mask: np.ndarray
    finite: bool
    batch_size: int
    batch_start_ns: int  # when its batch left the queues
    done_ns: int  # when the mask was on the host
    timings: BackendTimings
    road: np.ndarray | None = None  # the road layer (HxW bool), from backends that provide it


@dataclass(frozen=True, slots=True)
class RoadOut:
    """Drivable space of one frame, ready to publish."""

    free_rows: np.ndarray  # per column of the frame
    layer: np.ndarray  # the road layer at the published mask's size
    space: DrivableSpace


@dataclass(frozen=True, slots=True)
class Encoded:
    """What the post-processing thread hands back to the loop for publishing."""

    item: Inferred
    payload: bytes
    confusion: np.ndarray | None
    shape: tuple[int, int] = (0, 0)  # of the published mask (the frame's, or smaller with --mask-scale)
    road: RoadOut | None = None
    bev: BevOut | None = None  # the bird's-eye grids, for streams with a camera file that has a ground plane
    camera_hash: str | None = None  # the stream's camera file, named in the mask header


def encode_result(item: Inferred, encoding: Encoding | None, void: VoidMask | None = None,
                  scale: int = 1, calibration: StreamCalibration | None = None) -> Encoded:
    """Blocking (runs on the post-processing thread): static void, IoU counts (at full size), and
    what will be published (``encoding`` None: nothing is sent, nothing encoded): the mask, every
    ``scale``-th pixel, and the drivable space when the backend gave a road layer; with a camera
    (``calibration``) the bird's-eye grids of the full-size mask and road layer."""
    if void is not None:
        void.apply(item.mask)
    truth = item.frame.truth
    confusion = confusion_matrix(truth, item.mask) if truth is not None else None
    published = downscale(item.mask, scale)
    payload = encode_mask(published, encoding) if encoding is not None else b""
    road = None
    if item.road is not None and encoding is not None:
        road = road_output(item.mask, item.road, scale)
    bev = calibration.project(item.mask, item.road) if calibration is not None else None
    return Encoded(item, payload, confusion, (published.shape[0], published.shape[1]), road, bev,
                   calibration.camera_hash if calibration is not None else None)


def downscale(layer: np.ndarray, scale: int) -> np.ndarray:
    """Every ``scale``-th pixel from the middle of each ``scale`` x ``scale`` block (nearest): ids
    stay ids, no class appears that the full mask lacks."""
    if scale == 1:
        return layer
    return np.ascontiguousarray(layer[scale // 2::scale, scale // 2::scale])


def road_output(mask: np.ndarray, road: np.ndarray, scale: int) -> RoadOut:
    # After the static void: never road where the final mask is not flat ground.
    road = road & (mask == Category.FLAT)
    space = drivable_space(mask, road)
    assert space.free_rows is not None  # a road layer was given
    return RoadOut(np.asarray(space.free_rows), downscale(road, scale), space)


def iou_report(confusion: np.ndarray | None) -> IoUReport | None:
    if confusion is None:
        return None
    ious = per_class_iou(confusion)
    per_class = tuple(None if np.isnan(v) else float(v) for v in ious)
    present = [v for v in per_class if v is not None]
    return IoUReport(per_class, float(np.mean(present)) if present else None)


def validity(item: Inferred, now_ns: int, live: bool, max_age_ms: float) -> str | None:
    """Why a planner must not use this mask, or None when it may."""
    if not item.finite:
        return INVALID_NONFINITE
    if live and (now_ns - item.frame.capture_ns) / NS_PER_MS > max_age_ms:
        return INVALID_STALE
    return None


def make_header(
    encoded: Encoded,
    *,
    encoding: Encoding,
    model_id: str,
    publish_ns: int,
    publish_wall_ns: int,
    invalid_reason: str | None,
    dropped_before: int,
    health: StreamHealth | None = None,
    max_age_ms: float | None = None,
    run_id: str = "",
) -> MaskHeader:
    item = encoded.item
    frame = item.frame
    timings = StageTimings(
        queue_ms=(item.batch_start_ns - frame.capture_ns) / NS_PER_MS,
        preprocess_ms=item.timings.preprocess_ms,
        inference_ms=item.timings.inference_ms,
        postprocess_ms=item.timings.postprocess_ms,
    )
    return MaskHeader(
        stream_id=frame.source_id,
        seq=frame.seq,
        frame_name=frame.name,
        capture_mono_ns=frame.capture_ns,
        capture_wall_ns=frame.capture_wall_ns,
        publish_mono_ns=publish_ns,
        publish_wall_ns=publish_wall_ns,
        height=encoded.shape[0] or frame.height,
        width=encoded.shape[1] or frame.width,
        frame_height=frame.height,
        frame_width=frame.width,
        encoding=encoding,
        model_id=model_id,
        timings=timings,
        batch_size=item.batch_size,
        valid=invalid_reason is None,
        invalid_reason=invalid_reason,
        dropped_before=dropped_before,
        iou=iou_report(encoded.confusion),
        live=health.live if health else False,
        max_age_ms=max_age_ms,
        run_id=run_id,
        media_ns=frame.media_ns,
        stream_state=health.state.value if health else "live",
        reconnects=health.reconnects if health else 0,
        camera_hash=encoded.camera_hash,
    )


def frame_record(encoded: Encoded, header: MaskHeader, sent_ns: int) -> FrameRecord:
    """What telemetry keeps of one published frame."""
    item, frame = encoded.item, encoded.item.frame
    return FrameRecord(
        stream_id=frame.source_id,
        queue_ms=header.timings.queue_ms,
        preprocess_ms=header.timings.preprocess_ms,
        inference_ms=header.timings.inference_ms,
        postprocess_ms=header.timings.postprocess_ms,
        publish_ms=(sent_ns - item.done_ns) / 1e6,
        end_to_end_ms=(sent_ns - frame.capture_ns) / 1e6,
        confusion=encoded.confusion,
    )


def viewer_info(header: MaskHeader, fps: float) -> dict[str, Any]:
    """The frame's telemetry the viewer sends in the same message as its pixels (web_viewer.render):
    seq, capture -> publish latency, the stage timings, the stream's frame rate ``fps``, validity,
    stream state and reconnects, and the IoU per class (``None``: in neither truth nor prediction)
    when the frame had ground truth."""
    timings = header.timings
    info: dict[str, Any] = {"seq": header.seq, "latency_ms": round(header.latency_ms, 1), "valid": header.valid,
                            "fps": round(fps, 1), "model": header.model_id,
                            "state": header.stream_state, "reconnects": header.reconnects,
                            "live": header.live, "batch": header.batch_size, "dropped_before": header.dropped_before,
                            "stages_ms": {"queue": round(timings.queue_ms, 2),
                                          "preprocess": round(timings.preprocess_ms, 2),
                                          "inference": round(timings.inference_ms, 2),
                                          "postprocess": round(timings.postprocess_ms, 2)}}
    if header.invalid_reason is not None:
        info["invalid_reason"] = header.invalid_reason
    if header.iou is not None:
        info["iou"] = [None if value is None else round(value, 4) for value in header.iou.per_class]
        if header.iou.mean is not None:
            info["miou"] = round(header.iou.mean, 3)
    return info


def road_parts(mask_header: MaskHeader, road: RoadOut) -> list[bytes]:
    """The drivable-space message of the frame whose mask header is ``mask_header``."""
    header = RoadHeader(
        stream_id=mask_header.stream_id,
        run_id=mask_header.run_id,
        seq=mask_header.seq,
        capture_mono_ns=mask_header.capture_mono_ns,
        publish_mono_ns=mask_header.publish_mono_ns,
        publish_wall_ns=mask_header.publish_wall_ns,
        height=road.space.height,
        width=road.space.width,
        layer_height=road.layer.shape[0],
        layer_width=road.layer.shape[1],
        encoding=mask_header.encoding,
        valid=mask_header.valid,
        category_fractions=road.space.category_fractions,
        road_fraction=road.space.road_fraction or 0.0,
    )
    return encode_road(header, road.free_rows, road.layer)
