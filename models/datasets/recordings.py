"""The first frames of a recorded drive, blocking and in order, for offline tools (TensorRT
calibration): a video file, an image folder or glob, ``cityscapes:ROOT[:split[:city]]`` or a
``synthetic:`` drive. The live pipeline reads the same recordings through ``stream.sources``."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from models.datasets.cityscapes import IMAGE_EXTENSIONS, cityscapes_lister, list_images, read_rgb
from models.datasets.synthetic_scene import SyntheticDrive
from models.datasets.synthetic_spec import parse_synthetic_spec
from models.errors import DatasetError, UnreadableImage

log = logging.getLogger(__name__)


def read_frames(spec: str, count: int) -> list[np.ndarray]:
    """Up to ``count`` RGB uint8 frames of ``spec``; undecodable images are skipped (logged)."""
    if spec.startswith("synthetic:"):
        try:
            params = parse_synthetic_spec(spec)
        except ValueError as exc:
            raise DatasetError(str(exc)) from exc
        drive = SyntheticDrive(params["seed"], params["width"], params["height"], params["fps"])
        total = count if params["frames"] is None else min(count, params["frames"])
        return [drive.render(i)[0] for i in range(total)]
    if spec.startswith("cityscapes:"):
        root, _, rest = spec[len("cityscapes:"):].partition(":")
        split, _, city = rest.partition(":")
        return _images(cityscapes_lister(Path(root), split or "val", city or None)(), count)
    path = Path(spec)
    if path.is_dir() or any(ch in spec for ch in "*?["):
        return _images(list_images(spec)(), count)
    if not path.is_file():
        raise DatasetError(f"no such file or folder {spec}")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return _images([path], count)
    return _video(path, count)


def _images(paths: list[Path], count: int) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    for path in paths:
        if len(frames) >= count:
            break
        try:
            frames.append(read_rgb(path))
        except UnreadableImage as exc:
            log.warning("skipping %s", exc)
    return frames


def _video(path: Path, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise DatasetError(f"OpenCV cannot open {path} as a video")
    frames: list[np.ndarray] = []
    try:
        while len(frames) < count:
            ok, bgr = capture.read()
            if not ok or bgr is None:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    return frames
