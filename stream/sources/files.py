"""Recorded sources on disk: video files, and image folders/globs or the Cityscapes layout
(read by :mod:`models.datasets.cityscapes`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import cv2

from models.datasets.cityscapes import read_cityscapes_truth, read_rgb
from models.errors import DatasetError
from stream.sources.base import RawFrame, SourceError, ThreadedReplaySource

log = logging.getLogger(__name__)

DEFAULT_IMAGE_FPS = 10.0
DEFAULT_VIDEO_FPS = 30.0  # used when a container does not say
DROP_CAUSE_TRUNCATED = "video_truncated"



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
        try:
            self._paths = self._lister()
        except DatasetError as exc:
            raise SourceError(str(exc)) from exc
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
