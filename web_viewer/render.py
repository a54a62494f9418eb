"""Overlay rendering and wire packing for the viewer (pure functions, run in an executor).

Everything here is CPU work (resize, JPEG and PNG encode, JSON) and is only ever
called off the event loop, so it may take milliseconds without hurting the pipeline.

Wire format of one frame message, version 2 (a single binary WebSocket message)::

    +----------------+---------------------------+------------------+----------------------+
    | N: uint32, BE  | N bytes UTF-8 JSON header | J bytes: JPEG    | M bytes: mask PNG    |
    +----------------+---------------------------+------------------+----------------------+

* The JPEG is the camera image alone (no overlay), at most its :class:`Picture`'s ``max_width``
  wide (the hub's tiers: 960, then 480 for slow links); the page (or
  any client) blends the overlay itself, so it can change the opacity and hide classes.
* The mask is an 8-bit greyscale PNG (colour type 0, no palette, no gamma) of the *same* size
  as the JPEG whose pixel values are the category ids 0-7 (ids outside the categories, e.g.
  255 "ignore", are sent as 0, void). Browsers decode it with
  ``createImageBitmap(blob, {colorSpaceConversion: "none"})``: red = green = blue = id.
* The header is ``{**info, "v": 2, "stream": id, "seq": n, "width": w, "height": h,
  "quality": q, "jpeg_bytes": J, "mask_bytes": M}``: the caller's ``info`` (the frame's
  telemetry: ``latency_ms``, ``stages_ms``, ``fps``, ``state``, ``iou``, ...; see
  ``stream.stages.viewer_info``) plus the keys in ``RESERVED_KEYS``, which always win, so
  ``width``/``height`` describe the JPEG and the mask and ``N + 4 + J + M`` is the message
  size. ``seq`` is ``info["seq"]`` when given, otherwise a per-stream offer counter.
  Non-finite floats become ``null`` (browsers' ``JSON.parse`` rejects ``NaN``). A header
  whose info would exceed ``MAX_HEADER_BYTES`` keeps only the reserved keys plus
  ``"info_truncated": true``.

Pixels and telemetry of a frame travel in one message, so whatever shows them together is in
step by construction. Version 1 (header + overlay JPEG, no ``v`` key) is gone; a reader must
check ``v``.
"""

from __future__ import annotations

import json
import math
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np

from models.classes import CLASS_NAMES, NUM_CLASSES, PALETTE

PACKET_VERSION = 2
HEADER_LEN = struct.Struct(">I")
# A header is a few hundred bytes; a runaway info dict must not bloat every frame.
MAX_HEADER_BYTES = 16 * 1024
# Keys the viewer relies on; they override same-named keys from ``info``.
RESERVED_KEYS = ("v", "stream", "seq", "width", "height", "quality", "jpeg_bytes", "mask_bytes")
MASK_FORMAT = "png-grey-ids"  # named in the hello message
# zlib level of the viewer's mask PNG: level 3 is as fast as level 1 and ~25 % smaller; level 6 (files)
# costs 3-4x the time for ~35 % fewer bytes (960x480: 0.9 ms / 9.7 KB against 2.9 ms / 6.0 KB).
VIEWER_MASK_PNG_LEVEL = 3

# colorize() over all 256 uint8 values: ids outside the 8 categories (e.g. 255
# "ignore") render as void instead of raising IndexError inside the encoder.
_PALETTE_256 = np.zeros((256, 3), dtype=np.uint8)
_PALETTE_256[: len(PALETTE)] = PALETTE
_PALETTE_256.setflags(write=False)
# ids outside the categories -> void, for the wire mask
_ID_256 = np.where(np.arange(256) < NUM_CLASSES, np.arange(256), 0).astype(np.uint8)
_ID_256.setflags(write=False)


def class_table() -> list[dict[str, Any]]:
    """The legend the page shows, straight from the server's class table."""
    return [
        {"id": i, "name": name, "color": [int(c) for c in PALETTE[i]]} for i, name in enumerate(CLASS_NAMES)
    ]


def output_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """(width, height) after downscaling to at most ``max_width``, keeping aspect ratio."""
    if width <= max_width:
        return width, height
    scale = max_width / width
    return max_width, max(1, round(height * scale))


def _resized(image: np.ndarray, mask: np.ndarray, max_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Check the inputs; the image (area) and the mask (nearest: ids must not mix) at the output size."""
    _check_inputs(image, mask)
    height, width = image.shape[:2]
    out_w, out_h = output_size(width, height, max_width)
    if (out_w, out_h) != (width, height):
        image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA)
    if mask.shape != (out_h, out_w):
        mask = cv2.resize(mask, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    return image, mask


def render_overlay(image: np.ndarray, mask: np.ndarray, *, alpha: float, max_width: int) -> np.ndarray:
    """HxWx3 RGB image + category mask -> downscaled RGB blend of image and mask colours.

    Downscale first so the blend touches as few pixels as possible; the mask may
    be at model resolution, it is resized (nearest, ids must not mix) to the output.
    """
    image, mask = _resized(image, mask, max_width)
    colours = _PALETTE_256[mask]
    return cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0.0)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    # OpenCV assumes BGR channel order; without the swap roads would be green-ish.
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding failed for a {rgb.shape} image")
    return buf.tobytes()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Masks are few distinct values in long runs: zlib's default level is already small and fast
# (a 2048x1024 Cityscapes mask: 17 KB in 11 ms).
MASK_PNG_LEVEL = 6


def encode_mask_png(mask: np.ndarray, *, palette: bool = True, level: int = MASK_PNG_LEVEL) -> bytes:
    """HxW uint8 category ids -> PNG whose pixel values ARE the ids.

    ``palette``: an indexed-colour PNG (colour type 3) with the class colours as its palette, so it
    shows as the familiar colour mask in any viewer while a palette-aware reader (PIL ``mode "P"``)
    gets the ids back; ids outside the categories (255, ignore) draw as void. Otherwise 8-bit
    greyscale ids (``cv2.imread(..., IMREAD_UNCHANGED)`` reads them back; OpenCV expands a palette
    PNG to colours)."""
    if mask.dtype != np.uint8 or mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"mask must be a non-empty HxW uint8 array of category ids, got {mask.dtype} {mask.shape}")
    height, width = mask.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # each row: filter type 0 (none), then the ids
    rows[:, 1:] = mask
    colour_type = 3 if palette else 0
    chunks = [(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))]
    if palette:
        chunks.append((b"PLTE", _PALETTE_256.tobytes()))
    chunks += [(b"IDAT", zlib.compress(rows.tobytes(), level)), (b"IEND", b"")]
    return PNG_SIGNATURE + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)) for kind, data in chunks
    )


class FramePacket(NamedTuple):
    """One unpacked frame message: the header, the camera JPEG and the grey mask PNG of category ids."""

    header: dict[str, Any]
    jpeg: bytes
    mask_png: bytes


def pack_frame(header: dict[str, Any], jpeg: bytes, mask_png: bytes, *, quality: int | None = None) -> bytes:
    """Length-prefixed JSON header + JPEG + mask PNG, as documented in the module docstring;
    ``header`` comes from :func:`make_header` (the sizes, version and quality are added here)."""
    full = {**header, "v": PACKET_VERSION, "quality": quality, "jpeg_bytes": len(jpeg), "mask_bytes": len(mask_png)}
    raw = json.dumps(full, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return b"".join((HEADER_LEN.pack(len(raw)), raw, jpeg, mask_png))


def unpack_frame(message: bytes) -> FramePacket:
    """Inverse of :func:`pack_frame` (for Python clients and tests); ValueError on anything else."""
    if len(message) < HEADER_LEN.size:
        raise ValueError(f"frame message too short: {len(message)} bytes")
    (length,) = HEADER_LEN.unpack_from(message)
    end = HEADER_LEN.size + length
    if end > len(message):
        raise ValueError(f"header length {length} exceeds message size {len(message)}")
    header = json.loads(message[HEADER_LEN.size : end].decode("utf-8"))
    if not isinstance(header, dict) or header.get("v") != PACKET_VERSION:
        version = header.get("v") if isinstance(header, dict) else None
        raise ValueError(f"frame packet version {version!r}, expected {PACKET_VERSION}")
    jpeg_bytes, mask_bytes = header.get("jpeg_bytes"), header.get("mask_bytes")
    if not isinstance(jpeg_bytes, int) or not isinstance(mask_bytes, int) or jpeg_bytes < 0 or mask_bytes < 0 \
            or end + jpeg_bytes + mask_bytes != len(message):
        raise ValueError(f"jpeg_bytes {jpeg_bytes!r} + mask_bytes {mask_bytes!r} do not match the "
                         f"{len(message) - end} bytes after the header")
    return FramePacket(header, message[end : end + jpeg_bytes], message[end + jpeg_bytes :])


def make_header(stream_id: str, seq: int, width: int, height: int, info: dict[str, Any]) -> dict[str, Any]:
    """The JSON header of one frame, before :func:`pack_frame` adds version, quality and sizes."""
    safe = json_safe(info)
    header = {**safe, "stream": stream_id, "seq": safe.get("seq", seq), "width": width, "height": height}
    if len(json.dumps(header)) > MAX_HEADER_BYTES:
        header = {key: header[key] for key in ("stream", "seq", "width", "height")}
        header["info_truncated"] = True
    return header


class Picture(NamedTuple):
    """One picture tier on the wire: the camera JPEG at ``quality``, at most ``max_width`` wide (the
    mask PNG at the same size)."""

    quality: int
    max_width: int

    def label(self, widest: int) -> str:
        """``"40"`` at the widest size, ``"40@480w"`` for a narrower picture (stats keys)."""
        return str(self.quality) if self.max_width >= widest else f"{self.quality}@{self.max_width}w"


@dataclass(frozen=True, slots=True)
class RenderedFrame:
    """One frame encoded for the wire as one or more pictures, with what each step cost."""

    packets: dict[Picture, bytes]  # the whole message per picture
    resize_ms: float  # image and mask to the widest picture's size
    mask_ms: float  # that size's mask PNG
    mask_bytes: int
    # Per picture: its JPEG; a picture narrower than the widest also counts its own resize and
    # mask PNG here (ms and bytes), so its entry says what it alone costs.
    jpeg_ms: dict[Picture, float]
    jpeg_bytes: dict[Picture, int]


def wire_images(image: np.ndarray, mask: np.ndarray, max_width: int) -> tuple[np.ndarray, np.ndarray]:
    """The camera image (RGB) and the category ids at the output size (nearest: ids must not mix)."""
    image, mask = _resized(image, mask, max_width)
    if mask.size and int(mask.max()) >= NUM_CLASSES:
        mask = _ID_256[mask]
    return image, mask


class _Sized(NamedTuple):
    rgb: np.ndarray
    png: bytes
    header: dict[str, Any]


def _sized(stream_id: str, seq: int, rgb: np.ndarray, ids: np.ndarray, info: dict[str, Any]) -> _Sized:
    png = encode_mask_png(np.ascontiguousarray(ids), palette=False, level=VIEWER_MASK_PNG_LEVEL)
    return _Sized(rgb, png, make_header(stream_id, seq, rgb.shape[1], rgb.shape[0], info))


def render_frame(
    stream_id: str,
    seq: int,
    image: np.ndarray,
    mask: np.ndarray,
    info: dict[str, Any],
    *,
    pictures: Sequence[Picture],
) -> RenderedFrame:
    """The whole executor job for one frame: downscale to the widest picture, its mask PNG once, a
    JPEG per picture; a narrower picture is downscaled from the widest (mask PNG once per width)."""
    if not pictures:
        raise ValueError("render_frame needs at least one picture")
    widest = max(picture.max_width for picture in pictures)
    start = time.perf_counter()
    rgb, ids = wire_images(image, mask, widest)
    resized = time.perf_counter()
    full = _sized(stream_id, seq, rgb, ids, info)
    masked = time.perf_counter()
    by_width: dict[int, _Sized] = {}
    packets: dict[Picture, bytes] = {}
    jpeg_ms: dict[Picture, float] = {}
    jpeg_bytes: dict[Picture, int] = {}
    for picture in pictures:
        before = time.perf_counter()
        own = full
        if rgb.shape[1] > picture.max_width:
            if picture.max_width not in by_width:
                by_width[picture.max_width] = _sized(stream_id, seq, *_resized(rgb, ids, picture.max_width), info)
            own = by_width[picture.max_width]
        jpeg = encode_jpeg(own.rgb, picture.quality)
        jpeg_ms[picture] = (time.perf_counter() - before) * 1000.0
        jpeg_bytes[picture] = len(jpeg) + (len(own.png) if own is not full else 0)
        packets[picture] = pack_frame(own.header, jpeg, own.png, quality=picture.quality)
    return RenderedFrame(packets, (resized - start) * 1000.0, (masked - resized) * 1000.0, len(full.png),
                         jpeg_ms, jpeg_bytes)


def render_packet(
    stream_id: str,
    seq: int,
    image: np.ndarray,
    mask: np.ndarray,
    info: dict[str, Any],
    *,
    max_width: int,
    jpeg_quality: int,
) -> bytes:
    """One frame message as one picture (:func:`render_frame` with a single tier)."""
    picture = Picture(jpeg_quality, max_width)
    return render_frame(stream_id, seq, image, mask, info, pictures=(picture,)).packets[picture]


def json_safe(value: Any) -> Any:
    """Turn numpy scalars and non-finite floats into plain, strictly valid JSON values."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return str(value)


def _check_inputs(image: np.ndarray, mask: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 uint8 RGB, got {image.dtype} {image.shape}")
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be HxW uint8 category ids, got {mask.dtype} {mask.shape}")
