"""Live camera specs and their OpenCV openers: ``rtsp://`` and ``camera:N`` / ``/dev/videoN``.

Decoder: OpenCV's FFmpeg backend (RTSP) and its V4L2 backend (USB/CSI cameras). It is
already our video decoder, its wheels ship FFmpeg with RTSP built in, and it exposes
open/read timeouts; its one flaw for live use (a hung ``read()``) is what the frame-age
watchdog in :mod:`stream.sources.live` exists for. PyAV would give interruptible reads
but adds a dependency and a second decode path to keep in step.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import cv2

from stream.sources.base import SourceError
from stream.sources.live import Capture, Opener

RTSP_SCHEMES = ("rtsp://", "rtsps://")
CAMERA_PREFIXES = ("camera:", "/dev/video")
# Bound every FFmpeg call so an abandoned reader thread exits in seconds, not the default 30 s.
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000
_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# OpenCV reads the FFmpeg options from the environment at open time: one open at a time.
_ENV_LOCK = threading.Lock()
_CAMERA = re.compile(r"^(?:camera:(\d+)|(/dev/video\d+))(?:\?(.*))?$")
CAMERA_OPTIONS_HELP = "camera:N or /dev/videoN, optionally ?size=WxH&fps=F&fourcc=MJPG"


class RtspTransport(StrEnum):
    TCP = "tcp"  # default: no packet loss artefacts, works through NAT and firewalls
    UDP = "udp"  # lower latency on a clean link, smeared frames when packets are lost


def redact_url(url: str) -> str:
    """The URL without its password/user (``rtsp://***@host/...``): safe for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<malformed url>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def is_live_spec(spec: str) -> bool:
    return spec.startswith(RTSP_SCHEMES) or spec.startswith(CAMERA_PREFIXES)


@dataclass(frozen=True)
class RtspSpec:
    url: str  # with credentials: never logged
    transport: RtspTransport = RtspTransport.TCP

    @property
    def display(self) -> str:
        return redact_url(self.url)


def parse_rtsp(url: str, transport: RtspTransport = RtspTransport.TCP) -> RtspSpec:
    """Check an RTSP URL's form (scheme, host, port) without touching the network."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SourceError(f"source {shown!r}: malformed RTSP URL ({exc})") from None
    if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
        raise SourceError(f"source {shown!r}: expected rtsp://[user:pass@]HOST[:PORT]/PATH")
    if port == 0 or any(ch.isspace() for ch in url):
        raise SourceError(f"source {shown!r}: bad port or whitespace in the URL")
    return RtspSpec(url, RtspTransport(transport))


def rtsp_opener(spec: RtspSpec, *, open_timeout_ms: int = OPEN_TIMEOUT_MS,
                read_timeout_ms: int = READ_TIMEOUT_MS) -> Opener:
    def open_rtsp() -> Capture:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_timeout_ms]
        with _ENV_LOCK:
            previous = os.environ.get(_FFMPEG_OPTIONS_ENV)
            os.environ[_FFMPEG_OPTIONS_ENV] = f"rtsp_transport;{spec.transport.value}"
            try:
                capture = cv2.VideoCapture(spec.url, cv2.CAP_FFMPEG, params)
            finally:
                if previous is None:
                    os.environ.pop(_FFMPEG_OPTIONS_ENV, None)
                else:
                    os.environ[_FFMPEG_OPTIONS_ENV] = previous
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {spec.display} ({spec.transport.value})")
        return capture

    return open_rtsp


@dataclass(frozen=True)
class CameraSpec:
    device: int | str  # V4L2 index or /dev/videoN path
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    fourcc: str | None = None  # e.g. MJPG: most USB cameras reach full rate only compressed

    @property
    def display(self) -> str:
        return f"camera:{self.device}" if isinstance(self.device, int) else self.device


def parse_camera(spec: str) -> CameraSpec:
    match = _CAMERA.match(spec)
    if not match:
        raise SourceError(f"source {spec!r}: expected {CAMERA_OPTIONS_HELP}")
    device: int | str = int(match.group(1)) if match.group(1) is not None else match.group(2)
    options: dict[str, Any] = {}
    for key, value in parse_qsl(match.group(3) or "", keep_blank_values=True, strict_parsing=False):
        options.update(_camera_option(spec, key, value))
    return CameraSpec(device, **options)


def _camera_option(spec: str, key: str, value: str) -> dict[str, Any]:
    try:
        if key == "size":
            width, height = (int(v) for v in value.lower().split("x"))
            if width > 0 and height > 0:
                return {"width": width, "height": height}
        elif key == "fps" and float(value) > 0:
            return {"fps": float(value)}
        elif key == "fourcc" and len(value) == 4 and value.isascii() and value.isprintable():
            return {"fourcc": value}
    except ValueError:
        pass
    raise SourceError(f"source {spec!r}: bad camera option {key}={value!r}; expected {CAMERA_OPTIONS_HELP}")


CaptureFactory = Callable[..., Any]


def fourcc_code(fourcc: str) -> int:
    """``MJPG`` -> the little-endian int V4L2 and OpenCV use (cv2.VideoWriter_fourcc's arithmetic)."""
    return int.from_bytes(fourcc.encode("ascii"), "little")


def v4l2_opener(spec: CameraSpec, factory: CaptureFactory | None = None) -> Opener:
    """Open a V4L2 camera and apply its format; ``factory`` stands in for cv2.VideoCapture in tests."""

    def open_camera() -> Capture:
        make = factory or cv2.VideoCapture
        capture = make(spec.device, cv2.CAP_V4L2)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {spec.display} (no such device, busy, or no permission)")
        # FOURCC first: the sizes and rates a camera offers depend on the pixel format.
        if spec.fourcc:
            capture.set(cv2.CAP_PROP_FOURCC, fourcc_code(spec.fourcc))
        if spec.width and spec.height:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, spec.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, spec.height)
        if spec.fps:
            capture.set(cv2.CAP_PROP_FPS, spec.fps)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver keeps one frame: the newest
        return capture

    return open_camera
