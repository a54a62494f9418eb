"""What runs on the cluster's workers: :func:`decode_units` (Ray Data tasks) and :class:`SegmentActor`
(one model per actor, in an actor pool). Neither imports Ray, so both run (and are tested) without it.

Frames are decoded with the readers ``roadseg eval`` uses (:func:`~models.datasets.cityscapes.read_rgb`,
:func:`~models.datasets.cityscapes.read_cityscapes_label_ids`, and the recordings' own
:func:`~models.datasets.recordings.video_frames`), folded into categories with
:func:`~models.classes.label_ids_to_categories`, inferred by a backend made by
:func:`~models.backends.registry.create_backend` as eval makes it, and scored at the label resolution
with :func:`models.evaluation.metrics.confusion_matrix`: the per-frame matrices summed on the driver are
eval's matrix, by construction.

Rows between the stages carry images as raw bytes plus their shape (an Arrow binary column: no
tensor-extension schema to unify across frames of different sizes). Every failure of a frame or of a
whole drive becomes a row with ``error`` set, never an exception: a bad drive must not fail the
dataset, and Ray retries only what a lost worker left unfinished.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from models.classes import IGNORE, NUM_CLASSES, label_ids_to_categories, label_ids_to_road
from models.datasets.cityscapes import read_cityscapes_label_ids, read_rgb
from models.datasets.recordings import video_frames
from models.evaluation import metrics
from models.evaluation.fleet.drives import VIDEO, Drive

log = logging.getLogger(__name__)

IMAGES_PER_UNIT = 8  # image frames one decode task reads; a video is one unit (decoded in order)
PANEL_TILE_MAX_WIDTH = 640  # as roadseg eval's panels (models.evaluation.evaluate)
NO_SCORE = float("inf")  # the rank of a frame without a category IoU: never among the worst


# --- work units and decoding (Ray Data tasks) -----------------------------------------------------


def work_units(drives: list[Drive]) -> list[dict[str, str]]:
    """One row per decode task: ``{"unit": JSON}`` (a few image frames, or one whole video)."""
    units: list[dict[str, str]] = []
    for number, drive in enumerate(drives):
        if drive.error is not None:
            continue  # failed at listing: reported by the driver, nothing to decode
        if drive.kind == VIDEO:
            units.append({"unit": json.dumps({"drive": number, "video": drive.video, "limit": drive.limit})})
            continue
        for start in range(0, len(drive.frames), IMAGES_PER_UNIT):
            frames = [[f.index, f.name, f.image, f.truth] for f in drive.frames[start:start + IMAGES_PER_UNIT]]
            units.append({"unit": json.dumps({"drive": number, "frames": frames})})
    return units


def decode_units(batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data ``map_batches`` generator: each unit's frames, one row per yield."""
    for text in batch["unit"]:
        unit = json.loads(str(text))
        if "video" in unit:
            yield from _decode_video(unit["drive"], unit["video"], unit["limit"])
        else:
            for index, name, image_path, truth_path in unit["frames"]:
                yield _decode_image(unit["drive"], index, name, image_path, truth_path)


def _decode_image(drive: int, index: int, name: str, image_path: str, truth_path: str | None) -> dict[str, np.ndarray]:
    start = time.perf_counter()
    try:
        image = read_rgb(Path(image_path))
        truth = read_cityscapes_label_ids(Path(truth_path), image.shape[:2]) if truth_path else None
    except Exception as exc:  # UnreadableImage, OSError, a decoder's own error: the drive fails, not the run
        return frame_row(drive, index, name, error=f"cannot read {exc}")
    return frame_row(drive, index, name, image, truth, decode_ms=1000 * (time.perf_counter() - start))


def _decode_video(drive: int, path: str, limit: int | None) -> Iterator[dict[str, np.ndarray]]:
    index = 0
    try:
        frames: Generator[np.ndarray, None, None] = video_frames(Path(path))
        start = time.perf_counter()
        for image in frames:
            yield frame_row(drive, index, f"{index:06d}", image, decode_ms=1000 * (time.perf_counter() - start))
            index += 1
            if limit is not None and index >= limit:
                frames.close()
                return
            start = time.perf_counter()
    except Exception as exc:  # DatasetError (cannot open), a decoder error part-way
        yield frame_row(drive, -1 if index == 0 else index, "", error=f"{path}: {exc}")
        return
    if index == 0:
        yield frame_row(drive, -1, "", error=f"{path}: no frame could be decoded (corrupt or not a video)")


def frame_row(drive: int, index: int, name: str, image: np.ndarray | None = None, truth: np.ndarray | None = None,
              *, decode_ms: float = 0.0, error: str = "") -> dict[str, np.ndarray]:
    """One decoded frame (or a decode error) as a one-row batch."""
    height, width = image.shape[:2] if image is not None else (0, 0)
    return {
        "drive": np.array([drive], np.int64),
        "frame": np.array([index], np.int64),
        "name": _objects([name]),
        "image": _objects([image.tobytes() if image is not None else b""]),
        "truth": _objects([truth.astype(np.uint8, copy=False).tobytes() if truth is not None else b""]),
        "height": np.array([height], np.int64),
        "width": np.array([width], np.int64),
        "decode_ms": np.array([decode_ms], np.float64),
        "error": _objects([error]),
    }


def _objects(values: list[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


# --- the model actor -------------------------------------------------------------------------------


class SegmentActor:
    """One backend per actor. ``checkpoint``: the checkpoint file's bytes (shipped through the object
    store, so nodes need neither the model cache nor the driver's paths) named ``checkpoint_name``;
    None for an untrained ``smp:`` spec, built from ``model_spec``. ``panels``: how many worst frames
    the report shows; this actor attaches image | truth | prediction tiles to a frame only while it is
    among the ``panels`` worst this actor has scored, which provably includes the fleet's worst.
    ``masks``: a folder or object-store URI the category masks are written to, one PNG per frame."""

    def __init__(self, *, model_spec: str, checkpoint: bytes | None, checkpoint_name: str, backend: str,
                 device: str, precision: str, size: tuple[int, int] | None, batch: int, threads: int,
                 drive_names: list[str], masks: str | None, panels: int, road: bool) -> None:
        # As roadseg's own commands: OpenMP threads that sleep instead of spinning when idle, so the
        # decode tasks beside this actor do not stall its torch threads (before torch loads OpenMP).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch

        from models.backends.registry import create_backend
        from models.evaluation.road import road_unavailable
        from models.store.registry import load_model

        torch.set_num_threads(max(1, threads))
        if checkpoint is not None:
            folder = tempfile.mkdtemp(prefix="roadseg-fleet-")
            path = Path(folder) / checkpoint_name
            path.write_bytes(checkpoint)
            model, card = load_model(str(path))
        else:
            model, card = load_model(model_spec)
        if size is not None:
            problem = card.input.size_problem(*size)
            if problem:
                raise ValueError(f"--size: model {card.model_id}: {problem}")
        self.engine = create_backend(backend, model, card, device=device, precision=precision, input_size=size)
        self.engine.warmup((batch,))
        emits_road = bool(getattr(self.engine, "provides_road", False))  # scored only where the backend emits it
        self.road = road and emits_road and road_unavailable(card, model) is None
        self.drive_names = drive_names
        self.masks = MaskWriter(masks) if masks else None
        self.panels = panels
        self.worst: list[tuple[float, int, int]] = []  # the `panels` lowest (score, drive, frame) seen here
        self.pid = os.getpid()
        self.actor = f"{socket.gethostname()}:{self.pid}:{time.time_ns() % 10**9:09d}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [{key: batch[key][i] for key in batch} for i in range(len(batch["drive"]))]
        good = [row for row in rows if not row["error"]]
        images = [np.frombuffer(row["image"], np.uint8).reshape(int(row["height"]), int(row["width"]), 3)
                  for row in good]
        results: dict[tuple[int, int], dict[str, Any]] = {}
        start = time.perf_counter()
        if good:
            try:
                out = self.engine.infer(images)
            except Exception as exc:  # the batch's frames fail; the drive is reported, the run goes on
                for row in good:
                    row["error"] = f"inference failed: {type(exc).__name__}: {exc}"
            else:
                model_ms = out.timings.preprocess_ms + out.timings.inference_ms + out.timings.postprocess_ms
                for i, (row, image) in enumerate(zip(good, images, strict=True)):
                    road = out.road[i] if self.road and out.road is not None else None
                    results[_key(row)] = self._score(row, image, out.masks[i], road, out.valid[i], model_ms)
        busy_ms = 1000 * (time.perf_counter() - start) / max(len(rows), 1)
        done_at = time.time()
        columns: dict[str, list[Any]] = {name: [] for name in RESULT_COLUMNS}
        for row in rows:
            result = results.get(_key(row)) or _failed(row)
            result.update(busy_ms=busy_ms, done_at=done_at, actor=self.actor, pid=self.pid,
                          decode_ms=float(row["decode_ms"]))
            for name in RESULT_COLUMNS:
                columns[name].append(result.get(name, RESULT_DEFAULTS.get(name)))
        return {name: _column(name, values) for name, values in columns.items()}

    def _score(self, row: dict[str, Any], image: np.ndarray, mask: np.ndarray, road: np.ndarray | None,
               valid: bool, model_ms: float) -> dict[str, Any]:
        score_start = time.perf_counter()
        drive, frame, name = int(row["drive"]), int(row["frame"]), str(row["name"])
        result: dict[str, Any] = {"drive": drive, "frame": frame, "name": name, "error": "", "valid": bool(valid),
                                  "model_ms": model_ms}
        if row["truth"]:
            label_ids = np.frombuffer(row["truth"], np.uint8).reshape(mask.shape)
            truth = label_ids_to_categories(label_ids)
            frame_cm = metrics.confusion_matrix(truth, mask)
            result.update(scored=True, cm=frame_cm.astype(np.int64).tobytes(),
                          ignored=int(np.count_nonzero(truth == IGNORE)),
                          mean_iou=metrics.mean_iou(frame_cm), category_iou=metrics.category_iou(frame_cm),
                          pixel_accuracy=metrics.pixel_accuracy(frame_cm))
            if road is not None:
                road_cm = metrics.road_confusion(label_ids_to_road(label_ids), road)
                result["road_cm"] = road_cm.astype(np.int64).tobytes()
            rank = rank_key(result["category_iou"], drive, frame)
            if self._among_worst(rank):
                result.update(_tiles(image, truth, mask))
        if self.masks is not None:
            try:
                self.masks.write(self.drive_names[drive], name, mask)
            except Exception as exc:  # checked writable before the run: a full disk, a lost bucket
                result["error"] = f"cannot write the mask to {self.masks.dest}: {exc}"
        result["score_ms"] = 1000 * (time.perf_counter() - score_start)
        return result

    def _among_worst(self, rank: tuple[float, int, int]) -> bool:
        if self.panels <= 0 or rank[0] == NO_SCORE:
            return False
        if len(self.worst) >= self.panels and rank >= self.worst[-1]:
            return False
        self.worst = sorted([*self.worst, rank])[: self.panels]
        return True


def rank_key(category_iou: float, drive: int, frame: int) -> tuple[float, int, int]:
    """Worst first: a frame's category IoU (none: never worst), then drive and frame (a total order)."""
    return (float(category_iou) if np.isfinite(category_iou) else NO_SCORE, drive, frame)


def _key(row: dict[str, Any]) -> tuple[int, int]:
    return int(row["drive"]), int(row["frame"])


def _failed(row: dict[str, Any]) -> dict[str, Any]:
    return {"drive": int(row["drive"]), "frame": int(row["frame"]), "name": str(row["name"]),
            "error": str(row["error"])}


def _tiles(image: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Downscaled image, truth and prediction, as roadseg eval keeps them for its panels."""
    import cv2

    height, width = truth.shape
    tile_w = min(width, PANEL_TILE_MAX_WIDTH)
    tile_h = max(1, round(height * tile_w / width))
    size = (tile_w, tile_h)
    return {"tile_h": tile_h, "tile_w": tile_w,
            "tile_image": cv2.resize(image, size, interpolation=cv2.INTER_AREA).tobytes(),
            "tile_truth": cv2.resize(truth, size, interpolation=cv2.INTER_NEAREST).tobytes(),
            "tile_pred": cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST).tobytes()}


# Result rows: one per frame (or per failed drive, frame -1). Bytes columns: cm is the frame's
# NUM_CLASSES x NUM_CLASSES int64 confusion matrix, road_cm its 2x2 road one (empty: not scored).
RESULT_DEFAULTS: dict[str, Any] = {
    "scored": False, "valid": True, "cm": b"", "road_cm": b"", "ignored": 0, "mean_iou": float("nan"),
    "category_iou": float("nan"), "pixel_accuracy": float("nan"), "model_ms": 0.0, "score_ms": 0.0,
    "tile_h": 0, "tile_w": 0, "tile_image": b"", "tile_truth": b"", "tile_pred": b"",
}
RESULT_COLUMNS = ("drive", "frame", "name", "error", "scored", "valid", "cm", "road_cm", "ignored", "mean_iou",
                  "category_iou", "pixel_accuracy", "decode_ms", "model_ms", "score_ms", "busy_ms", "done_at",
                  "actor", "pid", "tile_h", "tile_w", "tile_image", "tile_truth", "tile_pred")
_OBJECT_COLUMNS = {"name", "error", "cm", "road_cm", "actor", "tile_image", "tile_truth", "tile_pred"}


def _column(name: str, values: list[Any]) -> np.ndarray:
    if name in _OBJECT_COLUMNS:
        return _objects(values)
    if name in ("scored", "valid"):
        return np.array(values, dtype=bool)
    if name in ("mean_iou", "category_iou", "pixel_accuracy", "decode_ms", "model_ms", "score_ms", "busy_ms",
                "done_at"):
        return np.array(values, dtype=np.float64)
    return np.array(values, dtype=np.int64)


def frame_confusion(row: dict[str, Any]) -> np.ndarray:
    """The frame's confusion matrix from a result row."""
    return np.frombuffer(row["cm"], np.int64).reshape(NUM_CLASSES, NUM_CLASSES)


# --- masks ---------------------------------------------------------------------------------------


class MaskWriter:
    """Category masks as single-channel PNGs (pixel = category id) at ``DEST/<drive>/<frame>.png``:
    a local folder (written to a temporary name, then renamed: a retried frame rewrites it whole) or
    any URI pyarrow's file systems open (``s3://``, ``gs://``, ``hdfs://``, ``file://``...)."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self._fs: Any = None
        if "://" in dest:
            from pyarrow import fs

            self._fs, self._root = fs.FileSystem.from_uri(dest)
        self._made: set[str] = set()

    def write(self, drive: str, frame: str, mask: np.ndarray) -> None:
        import cv2

        ok, encoded = cv2.imencode(".png", mask)
        if not ok:
            raise OSError(f"cannot encode the mask of {drive}/{frame}")
        data = encoded.tobytes()
        if self._fs is not None:
            folder = f"{self._root.rstrip('/')}/{drive}"
            if folder not in self._made:
                self._fs.create_dir(folder, recursive=True)
                self._made.add(folder)
            with self._fs.open_output_stream(f"{folder}/{frame}.png") as handle:
                handle.write(data)
            return
        folder_path = Path(self.dest) / drive
        folder_path.mkdir(parents=True, exist_ok=True)
        target = folder_path / f"{frame}.png"
        temporary = folder_path / f".{frame}.png.{os.getpid()}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, target)
