"""Source factory: ``--source`` strings -> opened :class:`FrameSource` objects.

Accepted forms (optionally prefixed with ``NAME=`` to name the stream):
- ``synthetic:[seed=N,size=WxH,fps=F,frames=N]`` procedural drive with exact truth
- ``cityscapes:ROOT[:split[:city]]``          leftImg8bit (+ gtFine labelIds) layout
- ``PATH/TO/FOLDER`` or ``'glob/**/*.png'``     image folder or glob, sorted
- ``PATH/TO/VIDEO`` (or ``file:PATH``)          any video OpenCV can decode
- ``rtsp://[user:pass@]HOST[:PORT]/PATH``       a live RTSP camera (credentials never shown)
- ``camera:N`` / ``/dev/videoN[?size=WxH&fps=F&fourcc=MJPG]``  a live V4L2 camera
"""

from __future__ import annotations

import re
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from models.datasets.cityscapes import (
    CITYSCAPES_FPS,
    IMAGE_EXTENSIONS,
    cityscapes_lister,
    cityscapes_truth_for,
    list_images,
)
from stream.clock import MONOTONIC, Clock
from stream.sources.base import EndOfStream, FrameSource, ReplayMode, SourceError, ThreadedReplaySource
from stream.sources.cameras import (
    CAMERA_PREFIXES,
    RTSP_SCHEMES,
    RtspTransport,
    is_live_spec,
    parse_camera,
    parse_rtsp,
    redact_url,
    rtsp_opener,
    v4l2_opener,
)
from stream.sources.files import ImageListSource, VideoFileSource
from stream.sources.limits import FrameLimits
from stream.sources.live import LiveCaptureSource, LiveOptions

__all__ = [
    "EndOfStream",
    "FrameSource",
    "ReplayMode",
    "SourceError",
    "SourceOptions",
    "is_live_spec",
    "open_source",
    "redact_url",
    "split_source_name",
]

SCHEMES = ("synthetic:", "cityscapes:", "file:", *RTSP_SCHEMES, *CAMERA_PREFIXES)
# Schemes we recognise but do not serve: say so instead of "no such file".
UNSUPPORTED_SCHEMES = ("v4l2:", "http://", "https://")
VALID_FORMS = (
    "synthetic:[seed=N,size=WxH,fps=F,frames=N], cityscapes:ROOT[:split[:city]], "
    "an image folder or glob, a video file path (file:PATH), rtsp://HOST[:PORT]/PATH, camera:N or /dev/videoN"
)
_NAMED = re.compile(r"^([A-Za-z][\w-]*)=(.+)$")
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*):")


@dataclass(frozen=True)
class SourceOptions:
    realtime: bool = False
    rate: float | None = None  # replay at this many frames/s (implies pacing)
    max_frames: int | None = None
    clock: Clock = MONOTONIC
    executor: Executor | None = None  # shared decode pool; None: one thread per source
    replay_mode: ReplayMode = ReplayMode.LOSSLESS  # what a paced replay does when behind
    limits: FrameLimits | None = field(default_factory=FrameLimits)  # larger frames: downscaled or rejected
    rtsp_transport: RtspTransport = RtspTransport.TCP
    live: LiveOptions = field(default_factory=LiveOptions)


def split_source_name(spec: str, default_id: str) -> tuple[str, str]:
    """``front=path.mp4`` -> (``front``, ``path.mp4``); otherwise (default_id, spec)."""
    match = _NAMED.match(spec)
    if match:
        return match.group(1), match.group(2)
    return default_id, spec


def _build_live(source_id: str, spec: str, options: SourceOptions) -> LiveCaptureSource:
    if spec.startswith(RTSP_SCHEMES):
        rtsp = parse_rtsp(spec, options.rtsp_transport)
        display, opener = rtsp.display, rtsp_opener(rtsp)
    else:
        camera = parse_camera(spec)
        display, opener = spec, v4l2_opener(camera)
    return LiveCaptureSource(source_id, display, opener, options=options.live, limits=options.limits,
                             max_frames=options.max_frames, clock=options.clock)


def _build(source_id: str, spec: str, options: SourceOptions) -> FrameSource:
    if is_live_spec(spec):
        return _build_live(source_id, spec, options)
    common = {"realtime": options.realtime, "rate": options.rate, "max_frames": options.max_frames,
              "clock": options.clock, "executor": options.executor, "replay_mode": options.replay_mode,
              "limits": options.limits}
    if spec.startswith("synthetic:"):
        from stream.sources.synthetic import SyntheticSource, parse_synthetic_spec

        try:
            params = parse_synthetic_spec(spec)
        except ValueError as exc:
            raise SourceError(str(exc)) from exc
        return SyntheticSource(source_id, spec, **params, **common)  # type: ignore[arg-type]
    if spec.startswith("cityscapes:"):
        parts = spec[len("cityscapes:") :].split(":")
        if not parts[0] or len(parts) > 3:
            raise SourceError(f"source {spec!r}: expected cityscapes:ROOT[:split[:city]]")
        root = Path(parts[0]).expanduser()
        split = parts[1] if len(parts) > 1 and parts[1] else "val"
        city = parts[2] if len(parts) > 2 and parts[2] else None
        return ImageListSource(
            source_id, spec, cityscapes_lister(root, split, city),
            truth_for=cityscapes_truth_for(root, split), fps=CITYSCAPES_FPS, **common,  # type: ignore[arg-type]
        )
    if spec.startswith(UNSUPPORTED_SCHEMES):
        raise SourceError(f"source {redact_url(spec)!r}: not supported; valid forms: {VALID_FORMS}")
    path_text = spec[len("file:") :] if spec.startswith("file:") else spec
    scheme = _SCHEME.match(path_text)
    if scheme and not Path(path_text).exists():
        raise SourceError(f"source {spec!r}: unknown scheme {scheme.group(1)!r}; valid: {VALID_FORMS}")
    path = Path(path_text).expanduser()
    if path.is_dir() or any(ch in path_text for ch in "*?["):
        return ImageListSource(source_id, spec, list_images(str(path)), **common)  # type: ignore[arg-type]
    if not path.exists():
        raise SourceError(f"source {spec!r}: no such file or folder {path}; valid forms: {VALID_FORMS}")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageListSource(source_id, spec, lambda: [path], **common)  # type: ignore[arg-type]
    return VideoFileSource(source_id, spec, str(path), **common)  # type: ignore[arg-type]


async def open_source(source_id: str, spec: str, options: SourceOptions = SourceOptions()) -> FrameSource:
    """Build and check a source; SourceError names the input when it cannot be used.

    Recordings are opened here (a missing file fails now). A live camera's spec is only
    checked: it connects when started and keeps retrying, since a camera that is not up
    yet must never stop the others.
    """
    source = _build(source_id, spec, options)
    if isinstance(source, ThreadedReplaySource):
        try:
            await source.open()
        except BaseException:
            await source.close()
            raise
    return source
