"""Recorded sources on disk: video files, image folders/globs, Cityscapes layout."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from models.classes import label_ids_to_categories
from stream.sources.base import FrameDecodeError, RawFrame, SourceError, ThreadedReplaySource

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
DEFAULT_IMAGE_FPS = 10.0
CITYSCAPES_FPS = 17.0  # the rate the Cityscapes sequences were recorded at
DEFAULT_VIDEO_FPS = 30.0  # used when a container does not say
DROP_CAUSE_TRUNCATED = "video_truncated"

CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_TRUTH_SUFFIX = "_gtFine_labelIds.png"


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB; FrameDecodeError if it is not one."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FrameDecodeError(str(path), "not a decodable image (corrupt or unsupported format)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_cityscapes_truth(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a ``gtFine_labelIds`` PNG and fold it into our 8 categories."""
    label_ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label_ids is None or label_ids.ndim != 2:
        raise FrameDecodeError(str(path), "ground truth is not a single-channel label image")
    if label_ids.shape != shape:
        raise FrameDecodeError(str(path), f"ground truth is {label_ids.shape}, image is {shape}")
    return label_ids_to_categories(label_ids)


class VideoFileSource(ThreadedReplaySource):
    """Anything OpenCV's FFmpeg backend can decode."""

    def __init__(self, source_id: str, spec: str, path: str, **kwargs: object) -> None:
        super().__init__(source_id, spec, **kwargs)  # type: ignore[arg-type]
        self.path = Path(path)
        self._cap: cv2.VideoCapture | None = None
        self._index = 0
        self._expected = 0
        self._missing = 0

    def _open(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"video {self.spec!r}: no such file {self.path}")
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"video {self.spec!r}: OpenCV cannot open {self.path} as a video")
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise SourceError(f"video {self.spec!r}: {self.path} has no decodable frame")
        # Re-open rather than seek: seeking is unreliable for some codecs.
        cap.release()
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._fps = fps if fps and fps > 0 else DEFAULT_VIDEO_FPS
        self._expected = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        self._cap = cap

    def _read(self) -> RawFrame | None:
        if self._cap is None:
            raise SourceError(f"video {self.spec!r}: read before open")
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            self._note_truncation()
            return None
        media_s = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        index = self._index
        self._index += 1
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return RawFrame(rgb, None, f"{self.path.name}#{index}", media_time_s=media_s)

    def _note_truncation(self) -> None:
        # The container promised more frames than the decoder delivered: count
        # them so a replay never loses frames silently (with --max-frames, only
        # those it would have read).
        expected = self._expected if self._max_frames is None else min(self._expected, self._max_frames)
        missing = expected - self._index
        if missing > 0:
            self.drops[DROP_CAUSE_TRUNCATED] += missing
            self._missing += missing
            log.error("video %s ended after %d of %d frames", self.path, self._index, expected)
            self._expected = self._index

    def _missing_at_end(self) -> int:
        missing, self._missing = self._missing, 0
        return missing

    def _skip(self, count: int) -> int:
        # grab() demuxes and decodes but skips the colour conversion and copy.
        for skipped in range(count):
            if self._cap is None or not self._cap.grab():
                return skipped
            self._index += 1
        return count

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageListSource(ThreadedReplaySource):
    """A fixed, sorted list of image files, optionally each with a truth file."""

    def __init__(
        self,
        source_id: str,
        spec: str,
        lister: Callable[[], list[Path]],
        *,
        truth_for: Callable[[Path], Path | None] | None = None,
        fps: float = DEFAULT_IMAGE_FPS,
        **kwargs: object,
    ) -> None:
        super().__init__(source_id, spec, fps=fps, **kwargs)  # type: ignore[arg-type]
        self._lister = lister
        self._truth_for = truth_for
        self._paths: list[Path] = []
        self._index = 0

    def _open(self) -> None:
        self._paths = self._lister()
        if not self._paths:
            raise SourceError(f"source {self.spec!r}: no images found")

    def __len__(self) -> int:
        return len(self._paths)

    def _skip(self, count: int) -> int:
        skipped = min(count, len(self._paths) - self._index)
        self._index += skipped
        return skipped

    def _read(self) -> RawFrame | None:
        if self._index >= len(self._paths):
            return None
        path = self._paths[self._index]
        self._index += 1
        image = read_rgb(path)
        truth = None
        truth_path = self._truth_for(path) if self._truth_for else None
        if truth_path is not None:
            truth = read_cityscapes_truth(truth_path, image.shape[:2])
        return RawFrame(image, truth, path.name)


def list_images(pattern: str) -> Callable[[], list[Path]]:
    """A folder (its images, sorted) or a glob pattern (``**`` allowed)."""

    def lister() -> list[Path]:
        path = Path(pattern)
        if path.is_dir():
            candidates = [p for p in path.iterdir() if p.is_file()]
        elif glob.has_magic(pattern):
            candidates = [Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        else:
            raise SourceError(f"image source {pattern!r}: no such folder")
        return sorted(p for p in candidates if p.suffix.lower() in IMAGE_EXTENSIONS)

    return lister


def cityscapes_lister(root: Path, split: str, city: str | None) -> Callable[[], list[Path]]:
    def lister() -> list[Path]:
        image_root = root / "leftImg8bit" / split
        if not image_root.is_dir():
            raise SourceError(f"cityscapes {root}: no folder {image_root}")
        cities = [image_root / city] if city else sorted(p for p in image_root.iterdir() if p.is_dir())
        for folder in cities:
            if not folder.is_dir():
                raise SourceError(f"cityscapes {root}: no city folder {folder}")
        return sorted(p for folder in cities for p in folder.glob(f"*{CITYSCAPES_IMAGE_SUFFIX}"))

    return lister


def cityscapes_truth_for(root: Path, split: str) -> Callable[[Path], Path | None]:
    """Map ``leftImg8bit/<split>/<city>/X_leftImg8bit.png`` to its gtFine labelIds, if present."""

    def truth_for(image_path: Path) -> Path | None:
        stem = image_path.name[: -len(CITYSCAPES_IMAGE_SUFFIX)]
        truth = root / "gtFine" / split / image_path.parent.name / f"{stem}{CITYSCAPES_TRUTH_SUFFIX}"
        return truth if truth.is_file() else None

    return truth_for
