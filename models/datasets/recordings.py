"""The first frames of a recorded drive, blocking and in order, for offline tools (TensorRT
calibration): a video file, an image folder or glob, ``cityscapes:ROOT[:split[:city]]`` or a
``synthetic:`` drive. The live pipeline reads the same recordings through ``stream.sources``;
``roadseg fleet eval`` parses its drives with :func:`parse_recording` and decodes videos with
:func:`video_frames`."""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.datasets.cityscapes import IMAGE_EXTENSIONS, cityscapes_lister, list_images, read_rgb
from models.datasets.synthetic_scene import SyntheticDrive
from models.datasets.synthetic_spec import parse_synthetic_spec
from models.errors import DatasetError, UnreadableImage

log = logging.getLogger(__name__)

# Live inputs `roadseg run` takes that are no recording (stream.sources serves them).
LIVE_PREFIXES = ("rtsp://", "rtsps://", "camera:", "/dev/video", "v4l2:", "http://", "https://")


@dataclass(frozen=True)
class Recording:
    """What a recorded-drive spec names: ``kind`` is ``synthetic``, ``cityscapes`` (``path`` the
    root, with ``split`` and ``city``), ``images`` (a folder or glob in ``path``), ``image`` (one
    image file) or ``video`` (a file OpenCV decodes)."""

    kind: str
    path: str
    split: str = "val"
    city: str | None = None


def parse_recording(spec: str) -> Recording:
    """The recording a spec names (``file:PATH`` is a path); DatasetError when it names none (a
    missing file, a live camera). Folders and files are checked, not listed."""
    if spec.startswith("synthetic:"):
        return Recording("synthetic", spec)
    if spec.startswith("cityscapes:"):
        parts = spec[len("cityscapes:"):].split(":")
        if not parts[0] or len(parts) > 3:
            raise DatasetError(f"{spec!r}: expected cityscapes:ROOT[:split[:city]]")
        split = parts[1] if len(parts) > 1 and parts[1] else "val"
        city = parts[2] if len(parts) > 2 and parts[2] else None
        return Recording("cityscapes", str(Path(parts[0]).expanduser()), split, city)
    if spec.startswith(LIVE_PREFIXES):
        raise DatasetError(f"{spec!r} is a live camera, not a recording")
    text = spec[len("file:"):] if spec.startswith("file:") else spec
    path = Path(text).expanduser()
    if path.is_dir() or any(ch in text for ch in "*?["):
        return Recording("images", str(path))
    if not path.is_file():
        raise DatasetError(f"no such file or folder {text}")
    return Recording("image" if path.suffix.lower() in IMAGE_EXTENSIONS else "video", str(path))


def read_frames(spec: str, count: int) -> list[np.ndarray]:
    """Up to ``count`` RGB uint8 frames of ``spec``; undecodable images are skipped (logged)."""
    recording = parse_recording(spec)
    if recording.kind == "synthetic":
        try:
            params = parse_synthetic_spec(spec)
        except ValueError as exc:
            raise DatasetError(str(exc)) from exc
        drive = SyntheticDrive(params["seed"], params["width"], params["height"], params["fps"])
        total = count if params["frames"] is None else min(count, params["frames"])
        return [drive.render(i)[0] for i in range(total)]
    if recording.kind == "cityscapes":
        return _images(cityscapes_lister(Path(recording.path), recording.split, recording.city)(), count)
    if recording.kind == "images":
        return _images(list_images(recording.path)(), count)
    if recording.kind == "image":
        return _images([Path(recording.path)], count)
    with contextlib.closing(video_frames(Path(recording.path))) as frames:
        return list(itertools.islice(frames, count))


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


def video_frames(path: Path) -> Generator[np.ndarray, None, None]:
    """The frames of a video file, in order, as RGB uint8, until the decoder stops; DatasetError
    when OpenCV cannot open it."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise DatasetError(f"OpenCV cannot open {path} as a video")
    try:
        while True:
            ok, bgr = capture.read()
            if not ok or bgr is None:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def video_frame_count(path: Path) -> int | None:
    """The frame count the container declares (may be off by a few), or None when unknown."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()
    return count if count > 0 else None
