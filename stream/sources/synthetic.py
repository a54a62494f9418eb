"""The ``synthetic:`` source: a :class:`SyntheticDrive` served frame by frame, plus its spec parser."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from models.datasets.synthetic_scene import SyntheticDrive
from models.datasets.synthetic_spec import parse_synthetic_spec
from stream.clock import MONOTONIC, Clock
from stream.sources.base import RawFrame, ThreadedReplaySource

__all__ = ["SyntheticDrive", "SyntheticSource", "parse_synthetic_spec"]


class SyntheticSource(ThreadedReplaySource):
    """The ``synthetic:`` source: a :class:`SyntheticDrive` served frame by frame, endless by default."""

    def __init__(self, source_id: str, spec: str, *, seed: int = 0, width: int = 512, height: int = 256,
                 fps: float = 15.0, frames: int | None = None, realtime: bool = False,
                 rate: float | None = None, max_frames: int | None = None, clock: Clock = MONOTONIC,
                 executor: Executor | None = None, **kwargs: Any) -> None:
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 0):
            raise ValueError(f"synthetic source {spec!r}: frames must be an integer >= 0, got {frames!r}")
        self._drive = SyntheticDrive(seed, width, height, fps)
        super().__init__(source_id, spec, realtime=realtime, rate=rate, fps=self._drive.fps, max_frames=max_frames,
                         clock=clock, executor=executor, **kwargs)
        self._frames, self._index = frames, 0

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of every frame, known before the first is drawn."""
        return self._drive.width, self._drive.height

    def _skip(self, count: int) -> int:
        # Frames are rendered from their index alone, so skipping costs nothing.
        skipped = count if self._frames is None else max(0, min(count, self._frames - self._index))
        self._index += skipped
        return skipped

    def _read(self) -> RawFrame | None:
        index = self._index
        if self._frames is not None and index >= self._frames:
            return None
        image, truth = self._drive.render(index)
        self._index += 1
        return RawFrame(image, truth, name=f"synthetic:{self._drive.seed}#{index}",
                        media_time_s=index / self._drive.fps)
