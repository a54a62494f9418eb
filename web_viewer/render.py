"""Overlay rendering and wire packing for the viewer (pure functions, run in an executor).

Everything here is CPU work (resize, blend, JPEG encode, JSON) and is only ever
called off the event loop, so it may take milliseconds without hurting the pipeline.

Wire format of one frame message (a single binary WebSocket message)::

    +----------------+---------------------------+-------------------+
    | N: uint32, BE  | N bytes UTF-8 JSON header | JPEG bytes (rest) |
    +----------------+---------------------------+-------------------+

The header is ``{**info, "stream": id, "seq": n, "width": w, "height": h}``: the
caller's ``info`` (latency_ms, fps, miou, ...) plus the keys the viewer relies
on, which always win so ``width``/``height`` describe the JPEG that follows.
``seq`` is ``info["seq"]`` when given, otherwise a per-stream offer counter.
Non-finite floats become ``null`` (browsers' ``JSON.parse`` rejects ``NaN``).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any

import cv2
import numpy as np

from models.classes import CLASS_NAMES, PALETTE

HEADER_LEN = struct.Struct(">I")
# A header is a few hundred bytes; a runaway info dict must not bloat every frame.
MAX_HEADER_BYTES = 16 * 1024
# Keys the viewer relies on; they override same-named keys from ``info``.
RESERVED_KEYS = ("stream", "seq", "width", "height")

# colorize() over all 256 uint8 values: ids outside the 8 categories (e.g. 255
# "ignore") render as void instead of raising IndexError inside the encoder.
_PALETTE_256 = np.zeros((256, 3), dtype=np.uint8)
_PALETTE_256[: len(PALETTE)] = PALETTE
_PALETTE_256.setflags(write=False)


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


def render_overlay(image: np.ndarray, mask: np.ndarray, *, alpha: float, max_width: int) -> np.ndarray:
    """HxWx3 RGB image + category mask -> downscaled RGB blend of image and mask colours.

    Downscale first so the blend touches as few pixels as possible; the mask may
    be at model resolution, it is resized (nearest, ids must not mix) to the output.
    """
    _check_inputs(image, mask)
    height, width = image.shape[:2]
    out_w, out_h = output_size(width, height, max_width)
    if (out_w, out_h) != (width, height):
        image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA)
    if mask.shape != (out_h, out_w):
        mask = cv2.resize(mask, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
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


def encode_mask_png(mask: np.ndarray, *, palette: bool = True) -> bytes:
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
    chunks += [(b"IDAT", zlib.compress(rows.tobytes(), MASK_PNG_LEVEL)), (b"IEND", b"")]
    return PNG_SIGNATURE + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)) for kind, data in chunks
    )


def pack_frame(header: dict[str, Any], jpeg: bytes) -> bytes:
    """Length-prefixed JSON header + JPEG, as documented in the module docstring."""
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return HEADER_LEN.pack(len(raw)) + raw + jpeg


def unpack_frame(message: bytes) -> tuple[dict[str, Any], bytes]:
    """Inverse of :func:`pack_frame` (for tests and Python clients)."""
    if len(message) < HEADER_LEN.size:
        raise ValueError(f"frame message too short: {len(message)} bytes")
    (length,) = HEADER_LEN.unpack_from(message)
    end = HEADER_LEN.size + length
    if end > len(message):
        raise ValueError(f"header length {length} exceeds message size {len(message)}")
    header = json.loads(message[HEADER_LEN.size : end].decode("utf-8"))
    return header, message[end:]


def make_header(stream_id: str, seq: int, width: int, height: int, info: dict[str, Any]) -> dict[str, Any]:
    safe = json_safe(info)
    header = {**safe, "stream": stream_id, "seq": safe.get("seq", seq), "width": width, "height": height}
    if len(json.dumps(header)) > MAX_HEADER_BYTES:
        header = {key: header[key] for key in RESERVED_KEYS}
        header["info_truncated"] = True
    return header


def render_packet(
    stream_id: str,
    seq: int,
    image: np.ndarray,
    mask: np.ndarray,
    info: dict[str, Any],
    *,
    alpha: float,
    max_width: int,
    jpeg_quality: int,
) -> bytes:
    """The whole executor job for one frame: overlay, JPEG, header, packing."""
    overlay = render_overlay(image, mask, alpha=alpha, max_width=max_width)
    jpeg = encode_jpeg(overlay, jpeg_quality)
    height, width = overlay.shape[:2]
    return pack_frame(make_header(stream_id, seq, width, height, info), jpeg)


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
