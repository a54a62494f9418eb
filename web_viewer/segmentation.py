"""One image through a segmentation backend: what ``POST /api/segment`` and ``roadseg segment`` share.

Pure functions and small types, no aiohttp and no live pipeline: uploaded (or read) bytes are
inspected BEFORE they are decoded (:func:`inspect_image`: JPEG or PNG, the dimensions in its
header within :data:`MAX_IMAGE_PIXELS` / :data:`MAX_IMAGE_SIDE`, not cut short), so a small file
that claims 100000x100000 pixels (a decompression bomb) is refused without allocating anything;
then decoded to RGB, segmented by one ``backend.infer([image])`` call (the backend resizes to the
model's input and returns the mask at the image's own size), optionally scored against a
ground-truth label with the project's own label tables and IoU code
(:func:`models.classes.label_ids_to_categories`, :mod:`models.evaluation.metrics`), and
described as JSON (class area fractions from :func:`models.drivable.drivable_space`).

Errors are :class:`ImageError` subclasses carrying the HTTP status the API answers with (400
corrupt or truncated, 413 too big, 415 not a JPEG/PNG); they are ValueErrors, so the command
line reports them as bad input (exit 2).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from models.backends.base import BackendClosed, BackendTimings, InferenceBackend
from models.classes import CLASS_NAMES, IGNORE, NUM_CLASSES, TRAIN_ID_TO_CATEGORY, label_ids_to_categories
from models.drivable import drivable_space
from models.evaluation import metrics
from models.evaluation.result import finite_or_none
from web_viewer.render import PNG_SIGNATURE, encode_jpeg, encode_mask_png, json_safe, render_overlay

# Limits on one upload (the API) or file (the command line). Bytes: the whole request body, image and
# label together. Pixels: read from the file's header before decoding; 4096x4096 is also the live
# pipeline's default --max-frame-size. At the limit one request holds ~50 MB of RGB and the torch
# backend ~600 MB of upsampled float logits (9 channels), hence the bound on concurrent requests.
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGE_SIDE = 8192
OVERLAY_ALPHA = 0.5  # the live viewer's blend
OVERLAY_JPEG_QUALITY = 90

LABEL_IDS = "labelIds"  # Cityscapes gtFine *_labelIds.png: the 34 label ids (0..33)
TRAIN_IDS = "trainIds"  # Cityscapes *_labelTrainIds.png: the 19 train ids (0..18), 255 ignored
CATEGORIES = "categories"  # roadseg's own 8 category ids (0..7), 255 ignored
LABEL_FORMATS = (LABEL_IDS, TRAIN_IDS, CATEGORIES)

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type and its (fixed) CRC: the last 8 bytes of a whole PNG
# Start-of-frame markers (SOF0..SOF15 except DHT C4, JPG C8, DAC CC): they carry the dimensions.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0..7: no length field
_OTHER_FORMATS = (  # magic bytes -> name, to say what a refused upload was
    (b"GIF8", "a GIF"), (b"BM", "a BMP"), (b"II*\x00", "a TIFF"), (b"MM\x00*", "a TIFF"), (b"%PDF", "a PDF"),
    (b"\x00\x00\x00\x0cjP", "a JPEG 2000"), (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "gzip data"),
)  # fmt: skip
# Cityscapes trainId (0..18) -> category over all 256 uint8 values; 255 and undefined ids are ignored.
_TRAIN_ID_LUT = np.full(256, IGNORE, dtype=np.uint8)
_TRAIN_ID_LUT[: len(TRAIN_ID_TO_CATEGORY)] = TRAIN_ID_TO_CATEGORY
_TRAIN_ID_LUT.setflags(write=False)


class ImageError(ValueError):
    """An image or label that cannot be used; the message names it and says why; ``status`` is the
    HTTP status the API answers with."""

    status = 400


class CorruptImage(ImageError):
    """Truncated, corrupt, or not what it must be (a colour label, a label of another size)."""


class ImageTooLarge(ImageError):
    """Over :data:`MAX_UPLOAD_BYTES`, or its header claims more than the pixel limits."""

    status = 413


class NotAnImage(ImageError):
    """Neither JPEG nor PNG (a label: not a PNG)."""

    status = 415


class ModelNotReady(RuntimeError):
    """The model is not loaded yet, or no longer (the API answers 503 with this reason)."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    kind: str  # "png" or "jpeg"
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Segmented:
    """One image's segmentation, as a segmenter returns it."""

    mask: np.ndarray  # HxW uint8 category ids at the image's own size
    road: np.ndarray | None  # HxW bool drivable-road layer, from a backend that provides one
    valid: bool  # False where the model produced non-finite logits
    model_id: str
    backend: str
    device: str
    precision: str
    timings: BackendTimings
    run_ms: float  # the whole infer call, on the thread that ran it


# What the viewer is given to segment uploads: on the live pipeline, its own inference thread.
Segmenter = Callable[[np.ndarray], Awaitable[Segmented]]


# --- inspecting and decoding -------------------------------------------------------------------------------------


def inspect_image(data: bytes, what: str) -> ImageInfo:
    """Kind and size from the header, without decoding: NotAnImage unless JPEG or PNG, ImageTooLarge
    over the pixel limits (checked first: a bomb is refused whatever follows its header),
    CorruptImage when the header is malformed or the file is cut short."""
    if not data:
        raise CorruptImage(f"{what}: empty (0 bytes)")
    frame_at = 0  # a JPEG's frame header: its end-of-image marker comes after it (an EXIF thumbnail's before)
    if data.startswith(PNG_SIGNATURE):
        info = ImageInfo("png", *_png_size(data, what))
    elif data.startswith(_JPEG_SOI):
        width, height, frame_at = _jpeg_size(data, what)
        info = ImageInfo("jpeg", width, height)
    else:
        raise NotAnImage(f"{what}: not a JPEG or PNG image ({_describe(data)}); only JPEG and PNG are read)")
    check_pixels(info.width, info.height, what)
    if info.kind == "png" and data.rfind(_PNG_IEND) < 0:
        raise CorruptImage(f"{what}: truncated PNG (it has no end chunk; {len(data)} bytes arrived)")
    if info.kind == "jpeg" and data.rfind(_JPEG_EOI) < frame_at:
        raise CorruptImage(f"{what}: truncated JPEG (it has no end-of-image marker; {len(data)} bytes arrived)")
    return info


def check_pixels(width: int, height: int, what: str) -> None:
    if width * height > MAX_IMAGE_PIXELS or max(width, height) > MAX_IMAGE_SIDE:
        raise ImageTooLarge(
            f"{what}: {width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels "
            f"({int(MAX_IMAGE_PIXELS**0.5)}x{int(MAX_IMAGE_PIXELS**0.5)}) and {MAX_IMAGE_SIDE} pixels per side"
        )


def _png_size(data: bytes, what: str) -> tuple[int, int]:
    # Signature (8), then the IHDR chunk: length 13 (4), "IHDR" (4), width (4), height (4), ...
    if len(data) < 24:
        raise CorruptImage(f"{what}: truncated PNG ({len(data)} bytes, not even a header)")
    if data[12:16] != b"IHDR" or int.from_bytes(data[8:12], "big") != 13:
        raise CorruptImage(f"{what}: corrupt PNG (its first chunk is not a header)")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if width == 0 or height == 0:
        raise CorruptImage(f"{what}: corrupt PNG (its header says {width}x{height} pixels)")
    return width, height


def _jpeg_size(data: bytes, what: str) -> tuple[int, int, int]:
    """Walk the marker segments up to the frame header (SOFn): its width, height and offset."""
    i, end = 2, len(data)
    while True:
        if i >= end:
            raise CorruptImage(f"{what}: truncated JPEG (it ends before its frame header)")
        if data[i] != 0xFF:
            raise CorruptImage(f"{what}: corrupt JPEG (no marker at byte {i})")
        while i < end and data[i] == 0xFF:  # a marker may be preceded by fill bytes
            i += 1
        if i >= end:
            raise CorruptImage(f"{what}: truncated JPEG (it ends before its frame header)")
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # a second start, the end or the scan before any frame header
            raise CorruptImage(f"{what}: corrupt JPEG (no frame header before marker 0x{marker:02X})")
        if i + 2 > end:
            raise CorruptImage(f"{what}: truncated JPEG (it ends before its frame header)")
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2:
            raise CorruptImage(f"{what}: corrupt JPEG (a segment of length {length})")
        if marker in _JPEG_SOF:
            if i + 7 > end:
                raise CorruptImage(f"{what}: truncated JPEG (it ends inside its frame header)")
            height, width = int.from_bytes(data[i + 3 : i + 5], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            if width == 0 or height == 0:
                raise CorruptImage(f"{what}: unsupported JPEG (its frame header says {width}x{height} pixels)")
            return width, height, i
        i += length


def _describe(data: bytes) -> str:
    for magic, name in _OTHER_FORMATS:
        if data.startswith(magic):
            return f"it is {name}"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "it is a WebP"
    return f"it starts with {data[:16]!r}"


def decode_image(data: bytes, what: str) -> np.ndarray:
    """JPEG or PNG bytes -> HxWx3 uint8 RGB (alpha dropped, grey expanded, 16 bits reduced, JPEG
    EXIF orientation applied as browsers do); ImageError unless it is a whole image within the limits."""
    info = inspect_image(data, what)
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise CorruptImage(f"{what}: corrupt {info.kind.upper()} (it does not decode)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def label_format_for(name: str | None, explicit: str | None = None) -> str:
    """The label's id scheme: ``explicit`` when given, else ``trainIds`` for a ``*labelTrainIds*`` file
    name, else Cityscapes ``labelIds``."""
    if explicit:
        if explicit not in LABEL_FORMATS:
            raise CorruptImage(f"unknown label format {explicit!r}; valid: {', '.join(LABEL_FORMATS)}")
        return explicit
    return TRAIN_IDS if name and "labeltrainids" in name.lower() else LABEL_IDS


def decode_label(data: bytes, what: str, shape: tuple[int, int], label_format: str = LABEL_IDS) -> np.ndarray:
    """A label PNG of ids at the image's ``shape`` (height, width) -> HxW uint8 truth: the 8
    categories, :data:`~models.classes.IGNORE` where no metric counts (as ``roadseg eval`` reads it)."""
    info = inspect_image(data, what)
    if info.kind != "png":
        raise NotAnImage(f"{what}: a label must be a PNG of ids (Cityscapes *_gtFine_labelIds.png), not a JPEG")
    ids = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if ids is None:
        raise CorruptImage(f"{what}: corrupt PNG (it does not decode)")
    if ids.ndim != 2:
        raise CorruptImage(f"{what}: a label must be a single-channel PNG of ids (Cityscapes *_gtFine_labelIds.png), "
                           f"this one has {ids.shape[2]} channels (a colour image?)")
    if ids.shape != tuple(shape):
        raise CorruptImage(f"{what}: the label is {ids.shape[1]}x{ids.shape[0]} pixels, the image "
                           f"{shape[1]}x{shape[0]}; they must match")
    return label_to_categories(ids, label_format)


def label_to_categories(ids: np.ndarray, label_format: str) -> np.ndarray:
    if label_format == LABEL_IDS:
        return label_ids_to_categories(ids)
    clipped = np.minimum(ids, IGNORE).astype(np.uint8)  # 16-bit ids above 255 are no class either
    if label_format == TRAIN_IDS:
        return _TRAIN_ID_LUT[clipped]
    return np.where(clipped < NUM_CLASSES, clipped, IGNORE).astype(np.uint8)


# --- segmenting, scoring, describing -----------------------------------------------------------------------------


def segment_one(backend: InferenceBackend, image: np.ndarray) -> Segmented:
    """Blocking: one image through ``backend`` (on the thread that owns it). The backend resizes to
    the model's input size and returns the mask at the image's own size."""
    start = time.monotonic_ns()
    try:
        out = backend.infer([image])
    except BackendClosed as exc:  # the pipeline is shutting down
        raise ModelNotReady(f"the model was closed ({exc})") from exc
    run_ms = (time.monotonic_ns() - start) / 1e6
    mask = out.masks[0]
    road = out.road[0] if out.road is not None else None
    height, width = image.shape[:2]
    if mask.shape != (height, width):  # the contract says image size; hold any backend to it
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        road = None
    return Segmented(mask=mask, road=road, valid=bool(out.valid[0]), model_id=backend.model_id,
                     backend=backend.name, device=str(backend.device), precision=str(backend.precision),
                     timings=out.timings, run_ms=run_ms)


def score(truth: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """IoU of ``mask`` against ``truth`` as ``roadseg eval`` defines it (one confusion matrix):
    ``mean`` over the 8 classes with void included, ``category_iou`` the official Cityscapes one
    (void ignored), per class both ways (None where a class is in neither), pixel accuracy."""
    cm = metrics.confusion_matrix(truth, mask)
    per_class = metrics.per_class_iou(cm)
    void_ignored = metrics.per_class_iou_void_ignored(cm)
    return {
        "mean": finite_or_none(metrics.mean_iou(cm)),
        "category_iou": finite_or_none(metrics.category_iou(cm)),
        "pixel_accuracy": finite_or_none(metrics.pixel_accuracy(cm)),
        "per_class": {name: finite_or_none(float(v)) for name, v in zip(CLASS_NAMES, per_class, strict=True)},
        "per_class_void_ignored": {name: finite_or_none(float(v))
                                   for name, v in zip(CLASS_NAMES, void_ignored, strict=True)},
        "scored_pixels": int(cm.sum()),
        "ignored_pixels": int(np.count_nonzero(truth == IGNORE)),
    }


def describe(seg: Segmented, timings_ms: dict[str, float], iou: dict[str, Any] | None = None,
             **extra: Any) -> dict[str, Any]:
    """The JSON description of one segmentation: model, size, class area fractions (``road`` too
    where the model has a road layer), timings and, with a label, the IoU."""
    height, width = seg.mask.shape
    fractions = drivable_space(seg.mask, seg.road).fractions()
    out: dict[str, Any] = {
        **extra,
        "model": seg.model_id, "backend": seg.backend, "device": seg.device, "precision": seg.precision,
        "width": width, "height": height, "valid": seg.valid,
        "fractions": {name: round(value, 6) for name, value in fractions.items()},
        "timings_ms": {name: round(value, 2) for name, value in timings_ms.items()},
    }  # fmt: skip
    if iou is not None:
        out["iou"] = iou
    return dict(json_safe(out))


def backend_timings_ms(seg: Segmented) -> dict[str, float]:
    return {"preprocess": seg.timings.preprocess_ms, "inference": seg.timings.inference_ms,
            "postprocess": seg.timings.postprocess_ms}


def mask_png(mask: np.ndarray, *, palette: bool = True) -> bytes:
    """The mask as PNG of ids: indexed colour with the class palette (``palette``) or 8-bit grey."""
    return encode_mask_png(mask, palette=palette)


def overlay_jpeg(image: np.ndarray, mask: np.ndarray) -> bytes:
    """The image blended with the class colours, at the image's full size, as the viewer draws it."""
    return encode_jpeg(render_overlay(image, mask, alpha=OVERLAY_ALPHA, max_width=image.shape[1]),
                       OVERLAY_JPEG_QUALITY)


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
