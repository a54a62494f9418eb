"""The ``synthetic:`` source: a :class:`SyntheticDrive` served frame by frame, plus its spec parser."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from stream.clock import MONOTONIC, Clock
from stream.sources.base import RawFrame, ThreadedReplaySource
from stream.sources.synthetic_scene import SyntheticDrive, check_drive_args

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


SPEC_KEYS = ("seed", "size", "fps", "frames")
_SPEC_HELP = "valid keys: seed=N, size=WxH, fps=F, frames=N (e.g. synthetic:seed=3,size=640x320,frames=100)"


def _parse_option(item: str, seen: set[str]) -> dict[str, Any]:
    key, eq, value = (part.strip() for part in item.partition("="))
    if key not in SPEC_KEYS or not eq or key in seen:
        raise ValueError(f"{'repeated' if key in seen else 'unknown or malformed'} option {item!r}")
    seen.add(key)
    try:
        if key == "size":
            width, height = value.lower().split("x")  # anything but exactly one "x" fails to unpack
            return {"width": int(width), "height": int(height)}
        return {key: float(value) if key == "fps" else int(value)}
    except ValueError:
        raise ValueError(f"bad value in {item!r}") from None


def parse_synthetic_spec(spec: str) -> dict[str, Any]:
    """``synthetic:[seed=N,size=WxH,fps=F,frames=N]`` -> SyntheticSource keyword arguments (with defaults)."""
    scheme, _, rest = spec.partition(":")
    params: dict[str, Any] = {"seed": 0, "width": 512, "height": 256, "fps": 15.0, "frames": None}
    seen: set[str] = set()
    try:
        if scheme.strip() != "synthetic":
            raise ValueError("it must start with 'synthetic:'")
        for item in (part.strip() for part in rest.split(",") if rest.strip()):
            params.update(_parse_option(item, seen))
        check_drive_args(params["seed"], params["width"], params["height"], params["fps"])
        if params["frames"] is not None and params["frames"] < 0:
            raise ValueError(f"frames must be >= 0, got {params['frames']}")
    except ValueError as exc:
        raise ValueError(f"synthetic spec {spec!r}: {exc}; {_SPEC_HELP}") from None
    return params
