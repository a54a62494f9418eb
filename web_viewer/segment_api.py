"""``POST /api/segment``: one JPEG or PNG in, its segmentation out; ``GET /segment``: the upload page.

Request: ``multipart/form-data`` with a file field ``image`` and optionally ``label`` (a
ground-truth PNG of ids at the image's size: Cityscapes ``*_gtFine_labelIds.png`` by default,
``*_labelTrainIds.png`` by its name, or ``?label_format=labelIds|trainIds|categories``), or the
image alone as a raw ``image/jpeg``, ``image/png`` or ``application/octet-stream`` body.

Response, by ``?format=`` or else the ``Accept`` header (default JSON):

=====================  ===================  ===================================================
``?format=``           ``Accept``           body
=====================  ===================  ===================================================
``json``               ``application/json`` model, size, class area fractions, timings (ms), and
                       (or none, ``*/*``)   with a label the IoU (per class, mean, category IoU);
                                            ``&images=1`` adds the mask and truth as PNG data URLs
``png`` / ``palette``  ``image/png``        the mask: indexed-colour PNG, pixel values = ids
``raw``                                     the mask: 8-bit grey PNG of the ids (0..7)
``overlay``            ``image/jpeg``       the image blended with the class colours (JPEG)
=====================  ===================  ===================================================

Image responses carry ``X-Roadseg-Model``, ``X-Roadseg-Size``, ``X-Roadseg-Fractions``
(``name=fraction,...``), ``Server-Timing`` and, with a label, ``X-Roadseg-IoU`` (mean IoU, 8
classes, void included) and ``X-Roadseg-Category-IoU`` (Cityscapes, void ignored).

Errors are JSON ``{"error": "...", "status": N}``: 400 corrupt or truncated image, bad
parameter or form; 403 cross-site request; 406 no acceptable type; 413 body over
:data:`~web_viewer.segmentation.MAX_UPLOAD_BYTES` or image over the pixel limits (read from its
header before decoding); 415 not a JPEG/PNG or an unknown body type; 429 too many uploads at once
(``Retry-After``); 503 no model yet (loading) or none behind this viewer.

The model runs through the injected ``segmenter`` (on the live pipeline: its own inference
thread, between batches); decoding, scoring and encoding run in the default thread pool, never
on the event loop. At most :data:`MAX_ACTIVE` uploads are decoded and segmented at once and
:data:`MAX_PENDING` admitted (read or waiting), so uploads cannot starve the live streams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import BodyPartReader, web

from web_viewer.render import class_table
from web_viewer.segmentation import (
    MAX_UPLOAD_BYTES,
    CorruptImage,
    ImageError,
    ImageTooLarge,
    ModelNotReady,
    Segmented,
    Segmenter,
    backend_timings_ms,
    decode_image,
    decode_label,
    describe,
    label_format_for,
    mask_png,
    overlay_jpeg,
    png_data_url,
    score,
)

log = logging.getLogger(__name__)

PAGE = Path(__file__).resolve().parent / "static" / "segment.html"
ROUTE = "/api/segment"
PAGE_ROUTE = "/segment"
MAX_ACTIVE = 2  # uploads decoded, segmented and encoded at once
MAX_PENDING = 4  # uploads admitted at once (being received, waiting or active); more get 429
RETRY_AFTER_S = 1
READ_CHUNK_BYTES = 64 * 1024
RAW_BODY_TYPES = ("image/jpeg", "image/png", "application/octet-stream")

JSON, PALETTE, RAW, OVERLAY = "json", "palette", "raw", "overlay"
FORMAT_NAMES = {"json": JSON, "png": PALETTE, "palette": PALETTE, "raw": RAW, "overlay": OVERLAY}
CONTENT_TYPES = {JSON: "application/json", PALETTE: "image/png", RAW: "image/png", OVERLAY: "image/jpeg"}
# Accept media range -> format; at equal q an exact type wins over a wildcard.
ACCEPTED = {"application/json": JSON, "image/png": PALETTE, "image/jpeg": OVERLAY,
            "image/*": PALETTE, "application/*": JSON, "*/*": JSON}  # fmt: skip
OUTPUT_SUFFIX = {PALETTE: "_mask.png", RAW: "_ids.png", OVERLAY: "_overlay.jpg", JSON: ".json"}


class RequestError(Exception):
    """A request the API refuses with ``status`` and a message saying why."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass(slots=True)
class Upload:
    image: bytes
    image_name: str | None
    label: bytes | None = None
    label_name: str | None = None


def negotiate(format_param: str | None, accept: str | None) -> str:
    """``?format=`` when given, else the best type in ``Accept`` (q-values honoured), else JSON."""
    if format_param is not None:
        name = FORMAT_NAMES.get(format_param.strip().lower())
        if name is None:
            raise RequestError(400, f"unknown format {format_param!r}; valid: {', '.join(FORMAT_NAMES)}")
        return name
    if not accept or not accept.strip():
        return JSON
    best: tuple[float, int, int] | None = None
    chosen = None
    for index, item in enumerate(accept.split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        name = ACCEPTED.get(media.lower())
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if name is None or quality <= 0:
            continue
        rank = (quality, 0 if "*" in media else 1, -index)
        if best is None or rank > best:
            best, chosen = rank, name
    if chosen is None:
        raise RequestError(406, f"none of Accept: {accept!r} is served here; accept application/json, image/png "
                                f"or image/jpeg, or pass ?format={'|'.join(FORMAT_NAMES)}")
    return chosen


class SegmentApi:
    """The routes; ``segmenter`` None (a viewer without a model) answers 503."""

    def __init__(self, segmenter: Segmenter | None, *, origin_allowed: Callable[[web.Request], bool] | None = None,
                 max_active: int = MAX_ACTIVE, max_pending: int = MAX_PENDING) -> None:
        self._segmenter = segmenter
        self._origin_allowed = origin_allowed
        self._active = asyncio.Semaphore(max_active)
        self._max_pending = max(max_pending, max_active)
        self._pending = 0
        self.stats = {"requests": 0, "ok": 0, "refused": 0, "busy": 0}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(ROUTE, self.segment)
        app.router.add_get(PAGE_ROUTE, self.page)

    async def page(self, _request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE)

    async def segment(self, request: web.Request) -> web.StreamResponse:
        start_ns = time.monotonic_ns()
        self.stats["requests"] += 1
        try:
            response = await self._segment(request, start_ns)
        except RequestError as exc:
            self.stats["refused"] += 1
            return _error(exc.status, str(exc), exc.headers)
        except ImageError as exc:
            self.stats["refused"] += 1
            return _error(exc.status, str(exc))
        except ModelNotReady as exc:
            self.stats["refused"] += 1
            return _error(503, f"no model to segment with: {exc}", {"Retry-After": str(RETRY_AFTER_S)})
        self.stats["ok"] += 1
        return response

    async def _segment(self, request: web.Request, start_ns: int) -> web.Response:
        if self._origin_allowed is not None and not self._origin_allowed(request):
            raise RequestError(403, "cross-site uploads are not allowed")
        output = negotiate(request.query.get("format"), request.headers.get("Accept"))
        if self._segmenter is None:
            raise ModelNotReady("this viewer has no model behind it")
        if self._pending >= self._max_pending:
            self.stats["busy"] += 1
            raise RequestError(429, f"too many uploads at once (at most {self._max_pending}); retry shortly",
                               {"Retry-After": str(RETRY_AFTER_S)})
        self._pending += 1
        try:
            upload = await read_upload(request)
            label_format = label_format_for(upload.label_name, request.query.get("label_format"))
            received_ns = time.monotonic_ns()
            async with self._active:
                return await self._process(request, upload, label_format, output, start_ns, received_ns)
        finally:
            self._pending -= 1

    async def _process(self, request: web.Request, upload: Upload, label_format: str, output: str,
                       start_ns: int, received_ns: int) -> web.Response:
        assert self._segmenter is not None
        loop = asyncio.get_running_loop()
        decode_start = time.monotonic_ns()
        image, truth = await loop.run_in_executor(None, _decode, upload, label_format)
        segment_start = time.monotonic_ns()
        try:
            seg = await self._segmenter(image)
        except (ModelNotReady, ImageError):
            raise
        except Exception as exc:  # the backend failed on this image: say so, the server goes on
            log.warning("segment: the model failed on an uploaded %dx%d image: %s", image.shape[1], image.shape[0],
                        exc)
            raise RequestError(500, f"the model failed on this image: {type(exc).__name__}: {exc}") from exc
        done = time.monotonic_ns()
        timings = {
            "receive": (received_ns - start_ns) / 1e6,
            "wait": (decode_start - received_ns) / 1e6,  # for a free slot (MAX_ACTIVE)
            "decode": (segment_start - decode_start) / 1e6,
            "queue": max(0.0, (done - segment_start) / 1e6 - seg.run_ms),  # for the model's thread
            **backend_timings_ms(seg),
            "model": seg.run_ms,
        }
        images = request.query.get("images", "") in ("1", "true", "yes")
        body, headers = await loop.run_in_executor(
            None, partial(_render, output, image, truth, seg, timings, start_ns, upload, label_format, images))
        return web.Response(body=body, headers=headers, content_type=CONTENT_TYPES[output])


async def read_upload(request: web.Request) -> Upload:
    """The image (and label) bytes of a multipart form or a raw body, never more than
    :data:`MAX_UPLOAD_BYTES` in all (413 as soon as it is exceeded, or at once by Content-Length)."""
    length = request.content_length
    if length is not None and length > MAX_UPLOAD_BYTES:
        raise _too_large(f"{length} bytes")
    content_type = request.content_type.lower()
    if content_type == "multipart/form-data":
        upload = await _read_form(request)
    elif content_type in RAW_BODY_TYPES:
        data = await _read_limited(request.content.iter_chunked(READ_CHUNK_BYTES), 0)
        upload = Upload(data, None)
    else:
        raise RequestError(415, f"cannot read a {content_type or 'typeless'} body: send multipart/form-data with a "
                                f"file field 'image' (and optionally 'label'), or the image itself as image/jpeg "
                                f"or image/png")
    if not upload.image:
        raise CorruptImage(f"{_what('image', upload.image_name)}: empty (0 bytes)")
    return upload


async def _read_form(request: web.Request) -> Upload:
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise RequestError(400, f"malformed multipart form: {exc}") from None
    fields: dict[str, tuple[bytes, str | None]] = {}
    total = 0
    while True:
        try:
            part = await reader.next()
        except ValueError as exc:
            raise RequestError(400, f"malformed multipart form: {exc}") from None
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise RequestError(400, "nested multipart forms are not supported")
        name = part.name or ""
        if name not in ("image", "label"):
            raise RequestError(400, f"unknown form field {name!r}; send 'image' and optionally 'label'")
        if name in fields:
            raise RequestError(400, f"form field {name!r} sent twice; send one image per request")
        data = await _read_limited(_chunks(part), total)
        total += len(data)
        fields[name] = (data, part.filename)
    if "image" not in fields:
        raise RequestError(400, "the form has no 'image' field (a JPEG or PNG file)")
    image, image_name = fields["image"]
    label, label_name = fields.get("label", (None, None))
    if label is not None and not label:  # an empty file input: no label
        label, label_name = None, None
    return Upload(image, image_name, label, label_name)


async def _chunks(part: BodyPartReader) -> Any:
    while chunk := await part.read_chunk(READ_CHUNK_BYTES):
        yield chunk


async def _read_limited(chunks: Any, already: int) -> bytes:
    parts: list[bytes] = []
    total = already
    async for chunk in chunks:
        total += len(chunk)
        if total > MAX_UPLOAD_BYTES:
            raise _too_large(f"more than {MAX_UPLOAD_BYTES} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _too_large(size: str) -> ImageTooLarge:
    return ImageTooLarge(f"upload of {size} is over the limit of {MAX_UPLOAD_BYTES} bytes "
                         f"({MAX_UPLOAD_BYTES / 2**20:.0f} MiB, image and label together)")


def _decode(upload: Upload, label_format: str) -> tuple[np.ndarray, np.ndarray | None]:
    image = decode_image(upload.image, _what("image", upload.image_name))
    if upload.label is None:
        return image, None
    return image, decode_label(upload.label, _what("label", upload.label_name), image.shape[:2], label_format)


def _what(field: str, filename: str | None) -> str:
    return f"{field} {filename!r}" if filename else field


def _render(output: str, image: np.ndarray, truth: np.ndarray | None, seg: Segmented, timings: dict[str, float],
            start_ns: int, upload: Upload, label_format: str, images: bool) -> tuple[bytes, dict[str, str]]:
    """Blocking: score against the label, build the body and the headers."""
    score_start = time.monotonic_ns()
    iou = {**score(truth, seg.mask), "label_format": label_format} if truth is not None else None
    timings["score"] = (time.monotonic_ns() - score_start) / 1e6
    encode_start = time.monotonic_ns()
    if output == JSON:
        extra: dict[str, Any] = {"image": upload.image_name}
        if truth is not None:
            extra["label"] = upload.label_name
        if images:
            extra["images"] = {"prediction": png_data_url(mask_png(seg.mask)),
                               "truth": png_data_url(mask_png(truth)) if truth is not None else None}
        extra["classes"] = class_table()
        timings["encode"] = (time.monotonic_ns() - encode_start) / 1e6
        timings["total"] = (time.monotonic_ns() - start_ns) / 1e6
        body = json.dumps(describe(seg, timings, iou, **extra), separators=(",", ":")).encode("utf-8")
    elif output == OVERLAY:
        body = overlay_jpeg(image, seg.mask)
    else:
        body = mask_png(seg.mask, palette=output == PALETTE)
    timings.setdefault("encode", (time.monotonic_ns() - encode_start) / 1e6)
    timings.setdefault("total", (time.monotonic_ns() - start_ns) / 1e6)
    return body, _headers(output, seg, timings, iou, upload.image_name)


def _headers(output: str, seg: Segmented, timings: dict[str, float], iou: dict[str, Any] | None,
             image_name: str | None) -> dict[str, str]:
    height, width = seg.mask.shape
    described = describe(seg, {})
    headers = {
        "X-Roadseg-Model": _header_safe(seg.model_id),
        "X-Roadseg-Size": f"{width}x{height}",
        "X-Roadseg-Fractions": ",".join(f"{name}={value:.4f}" for name, value in described["fractions"].items()),
        "Server-Timing": ", ".join(f"{name};dur={value:.1f}" for name, value in timings.items()),
    }
    if iou is not None:
        headers["X-Roadseg-IoU"] = _number(iou["mean"])
        headers["X-Roadseg-Category-IoU"] = _number(iou["category_iou"])
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(image_name).stem)[:100] if image_name else "image"
    headers["Content-Disposition"] = f'inline; filename="{stem or "image"}{OUTPUT_SUFFIX[output]}"'
    return headers


def _number(value: float | None) -> str:
    return "null" if value is None else f"{value:.6f}"


def _header_safe(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", text)[:200]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status, headers=headers)
