"""The wire format of ``roadseg.mask`` messages: the ONE module publisher and subscribers share.

A message is a ZeroMQ multipart message of exactly three frames::

    [topic, header_json_utf8, mask_payload]

* ``topic`` is ``b"mask/" + stream_id`` so a SUB socket can filter per stream by prefix.
* ``header_json_utf8`` is a JSON object (see :class:`MaskHeader`, ``SCHEMA.md``).
* ``mask_payload`` is the HxW uint8 category mask, raw or zlib-compressed (:class:`Encoding`).

Compatibility rule: within one ``version``, publishers may ADD JSON keys; decoders ignore
keys they do not know. Removing or retyping a key, changing a meaning or unit, or adding an
encoding bumps ``version``; decoders reject versions they were not written for.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from decision_bridge.wire import (  # noqa: F401 - SchemaError and the limits are this module's API too
    INT64_MAX,
    INT64_MIN,
    MAX_HEADER_BYTES,
    MAX_JSON_DEPTH,
    SchemaError,
    _check_scalars,
    _frame_bytes,
    _load_json,
    _take,
    _take_list,
    _take_optional,
    check_schema,
    dump_json,
)
from models.classes import CLASS_NAMES, NUM_CLASSES

SCHEMA_NAME = "roadseg.mask"
SCHEMA_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (SCHEMA_VERSION,)
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
TOPIC_PREFIX = b"mask/"
MESSAGE_PARTS = 3

# Level 1: masks are long runs of a few values, so level 1 already gets most of the
# ratio while costing a fraction of the default level's time on the publish path.
ZLIB_LEVEL = 1
# Refuse absurd sizes before allocating: a corrupt or hostile header must not make a
# subscriber inflate gigabytes. 16384 px is well beyond any automotive camera.
MAX_SIDE = 16384
# Mask pixels are uint8 category ids, so a class table can never be longer than this.
MAX_CLASSES = 256


class Encoding(StrEnum):
    RAW = "u8-raw"  # H*W bytes, row-major, one uint8 category id per pixel
    ZLIB = "u8-zlib"  # the same H*W bytes as one zlib (RFC 1950) stream


@dataclass(frozen=True, slots=True)
class StageTimings:
    """Milliseconds the frame spent in each pipeline stage before publish."""

    queue_ms: float
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float


@dataclass(frozen=True, slots=True)
class IoUReport:
    """IoU against ground truth, only when the source had labels (replay/eval runs)."""

    per_class: tuple[float | None, ...]  # one per class; None: class in neither truth nor prediction
    mean: float | None  # mean over the non-None entries; None if all are None


@dataclass(frozen=True, slots=True)
class MaskHeader:
    """Everything a planner needs to decide whether and how to trust one mask."""

    stream_id: str
    seq: int  # the source's frame number for this stream (Frame.seq)
    frame_name: str
    capture_mono_ns: int  # CLOCK_MONOTONIC of the publishing host
    capture_wall_ns: int  # UTC epoch ns, for cross-host log correlation only
    publish_mono_ns: int
    publish_wall_ns: int
    height: int
    width: int
    encoding: Encoding
    model_id: str
    timings: StageTimings
    batch_size: int
    valid: bool
    invalid_reason: str | None
    dropped_before: int  # frames of this stream dropped by the publisher since the previous message
    iou: IoUReport | None
    classes: tuple[str, ...] = CLASS_NAMES
    # Added in version 1 (add-only; absent in older messages, so decoders default them):
    live: bool = False  # the stream is a live camera (newest frame kept) rather than a lossless replay
    max_age_ms: float | None = None  # the staleness budget that applies to this stream; None: none (replay)
    stream_state: str = "live"  # connecting | live | stalled | reconnecting | ended | failed
    reconnects: int = 0  # times this stream was re-opened after a loss, so far
    run_id: str = ""  # random per publisher run: a new value means the publisher restarted
    media_ns: int | None = None  # the source's own timestamp of the frame (media position, RTSP pts)
    frame_height: int | None = None  # the frame's size when the mask is smaller (--mask-scale); None: same
    frame_width: int | None = None
    camera_hash: str | None = None  # the stream's camera file ("sha256:..."); None: the stream has none

    @property
    def latency_ms(self) -> float:
        """Capture -> publish on the publisher's monotonic clock."""
        return (self.publish_mono_ns - self.capture_mono_ns) / 1e6


@dataclass(frozen=True, slots=True)
class MaskMessage:
    header: MaskHeader
    mask: np.ndarray  # HxW uint8 category ids, read-only


def topic_for(stream_id: str) -> bytes:
    return TOPIC_PREFIX + stream_id.encode("utf-8")


# --------------------------------------------------------------------------- encoding


def encode_mask(mask: np.ndarray, encoding: Encoding | str = Encoding.ZLIB) -> bytes:
    """HxW uint8 category mask -> payload bytes in ``encoding``."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype != np.uint8:
        got = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise SchemaError(f"mask must be a 2-D uint8 array (HxW), got {got}")
    _check_size(mask.shape[0], mask.shape[1])
    top = int(mask.max())
    if top >= NUM_CLASSES:
        raise SchemaError(f"mask contains class id {top}; ids must be < {NUM_CLASSES}")
    raw = np.ascontiguousarray(mask)
    if Encoding(encoding) is Encoding.RAW:
        return raw.tobytes()
    return zlib.compress(raw.data, ZLIB_LEVEL)


def encode(header: MaskHeader, payload: bytes) -> list[bytes]:
    """Header + payload (from :func:`encode_mask`) -> the three frames to send."""
    _check_header(header)
    if header.encoding is Encoding.RAW and len(payload) != header.height * header.width:
        raise SchemaError(f"u8-raw payload is {len(payload)} bytes, expected {header.height}x{header.width}")
    return [topic_for(header.stream_id), dump_json(header_to_json(header), "header"), payload]


def encode_message(header: MaskHeader, mask: np.ndarray) -> list[bytes]:
    """Convenience: encode ``mask`` with ``header.encoding`` and check it matches the header."""
    if mask.shape != (header.height, header.width):
        raise SchemaError(f"mask shape {mask.shape} != header {header.height}x{header.width}")
    return encode(header, encode_mask(mask, header.encoding))


def header_to_json(header: MaskHeader) -> dict[str, Any]:
    t = header.timings
    iou = header.iou
    return {
        "schema": SCHEMA_NAME,
        "version": SCHEMA_VERSION,
        "stream_id": header.stream_id,
        "seq": header.seq,
        "frame_name": header.frame_name,
        "capture_mono_ns": header.capture_mono_ns,
        "capture_wall_ns": header.capture_wall_ns,
        "publish_mono_ns": header.publish_mono_ns,
        "publish_wall_ns": header.publish_wall_ns,
        "height": header.height,
        "width": header.width,
        "encoding": header.encoding.value,
        "model_id": header.model_id,
        "timings": {
            "queue_ms": t.queue_ms,
            "preprocess_ms": t.preprocess_ms,
            "inference_ms": t.inference_ms,
            "postprocess_ms": t.postprocess_ms,
        },
        "batch_size": header.batch_size,
        "valid": header.valid,
        "invalid_reason": header.invalid_reason,
        "dropped_before": header.dropped_before,
        "iou": None if iou is None else {"per_class": list(iou.per_class), "mean": iou.mean},
        "classes": list(header.classes),
        "live": header.live,
        "max_age_ms": header.max_age_ms,
        "stream_state": header.stream_state,
        "reconnects": header.reconnects,
        "run_id": header.run_id,
        "media_ns": header.media_ns,
        "frame_height": header.frame_height,
        "frame_width": header.frame_width,
        "camera_hash": header.camera_hash,
    }


# --------------------------------------------------------------------------- decoding


def decode(parts: Sequence[bytes]) -> MaskMessage:
    """Three received frames -> :class:`MaskMessage`; :class:`SchemaError` says what is wrong.

    Any input (any byte sequence in any frame, any number of frames) either decodes or
    raises :class:`SchemaError`; never another exception, so one hostile or corrupt message
    cannot take a subscriber down.
    """
    try:
        count = len(parts)
    except TypeError:
        raise SchemaError(f"message parts must be a sequence of frames, got {type(parts).__name__}") from None
    if count != MESSAGE_PARTS:
        raise SchemaError(f"expected {MESSAGE_PARTS} message parts [topic, header, payload], got {count}")
    topic, raw_header, payload = (_frame_bytes(i, p) for i, p in enumerate(parts))
    if not topic.startswith(TOPIC_PREFIX):
        raise SchemaError(f"topic {topic[:64]!r} does not start with {TOPIC_PREFIX!r}")
    header = header_from_json(_load_json(raw_header))
    if topic != topic_for(header.stream_id):
        raise SchemaError(f"topic {topic[:64]!r} does not match stream_id {header.stream_id!r:.80}")
    return MaskMessage(header, _decode_payload(header, payload))


def header_from_json(obj: Mapping[str, Any]) -> MaskHeader:
    """Validate a parsed header object; unknown keys are ignored (forward compatibility)."""
    check_schema(obj, SCHEMA_NAME, SUPPORTED_VERSIONS)
    encoding = _take(obj, "encoding", str)
    try:
        enc = Encoding(encoding)
    except ValueError:
        names = ", ".join(e.value for e in Encoding)
        raise SchemaError(f"field encoding: unsupported {encoding!r} (supported: {names})") from None
    header = MaskHeader(
        stream_id=_take(obj, "stream_id", str),
        seq=_take(obj, "seq", int),
        frame_name=_take(obj, "frame_name", str),
        capture_mono_ns=_take(obj, "capture_mono_ns", int),
        capture_wall_ns=_take(obj, "capture_wall_ns", int),
        publish_mono_ns=_take(obj, "publish_mono_ns", int),
        publish_wall_ns=_take(obj, "publish_wall_ns", int),
        height=_take(obj, "height", int),
        width=_take(obj, "width", int),
        encoding=enc,
        model_id=_take(obj, "model_id", str),
        timings=_timings_from_json(_take(obj, "timings", dict)),
        batch_size=_take(obj, "batch_size", int),
        valid=_take(obj, "valid", bool),
        invalid_reason=_take(obj, "invalid_reason", str, nullable=True),
        dropped_before=_take(obj, "dropped_before", int),
        iou=_iou_from_json(_take(obj, "iou", dict, nullable=True)),
        classes=tuple(_take_list(obj, "classes", str)),
        live=_take_optional(obj, "live", bool, False),
        max_age_ms=_take_optional(obj, "max_age_ms", float, None),
        stream_state=_take_optional(obj, "stream_state", str, "live"),
        reconnects=_take_optional(obj, "reconnects", int, 0),
        run_id=_take_optional(obj, "run_id", str, ""),
        media_ns=_take_optional(obj, "media_ns", int, None),
        frame_height=_take_optional(obj, "frame_height", int, None),
        frame_width=_take_optional(obj, "frame_width", int, None),
        camera_hash=_take_optional(obj, "camera_hash", str, None),
    )
    _check_header(header)
    return header


def _timings_from_json(obj: Mapping[str, Any]) -> StageTimings:
    return StageTimings(
        queue_ms=_take(obj, "queue_ms", float, where="timings."),
        preprocess_ms=_take(obj, "preprocess_ms", float, where="timings."),
        inference_ms=_take(obj, "inference_ms", float, where="timings."),
        postprocess_ms=_take(obj, "postprocess_ms", float, where="timings."),
    )


def _iou_from_json(obj: Mapping[str, Any] | None) -> IoUReport | None:
    if obj is None:
        return None
    per_class = _take_list(obj, "per_class", float, nullable=True, where="iou.")
    return IoUReport(tuple(per_class), _take(obj, "mean", float, nullable=True, where="iou."))


def _check_size(height: int, width: int) -> None:
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise SchemaError(f"mask size {height}x{width} out of range (1..{MAX_SIDE} per side)")


def _check_header(h: MaskHeader) -> None:
    """Invariants checked on both sides, so a publisher cannot send what subscribers reject."""
    _check_scalars(h, "")
    if not h.stream_id:
        raise SchemaError("field stream_id must not be empty")
    _check_size(h.height, h.width)
    for name in ("seq", "dropped_before", "reconnects"):
        if getattr(h, name) < 0:
            raise SchemaError(f"field {name} must be >= 0, got {getattr(h, name)}")
    if h.batch_size < 1:
        raise SchemaError(f"field batch_size must be >= 1, got {h.batch_size}")
    if not isinstance(h.encoding, Encoding):
        raise SchemaError(f"field encoding must be an Encoding, got {h.encoding!r}")
    if not 0 < len(h.classes) <= MAX_CLASSES:
        raise SchemaError(f"field classes must list 1..{MAX_CLASSES} names, got {len(h.classes)}")
    if h.iou is not None and len(h.iou.per_class) != len(h.classes):
        raise SchemaError(
            f"field iou.per_class has {len(h.iou.per_class)} entries, "
            f"expected {len(h.classes)} (one per class)"
        )


def _decode_payload(header: MaskHeader, payload: bytes) -> np.ndarray:
    return decode_layer(payload, header.encoding, header.height, header.width, len(header.classes))


def decode_layer(payload: bytes, encoding: Encoding, height: int, width: int, classes: int) -> np.ndarray:
    """A ``height`` x ``width`` uint8 layer (read-only) from its payload; every value < ``classes``.
    Shared by masks and the road layer (section 4's rules)."""
    expected = height * width
    data = payload if encoding is Encoding.RAW else _inflate(payload, expected)
    if len(data) != expected:
        raise SchemaError(
            f"{encoding.value} payload decodes to {len(data)} bytes, "
            f"expected height*width = {height}*{width} = {expected}"
        )
    mask = np.frombuffer(data, dtype=np.uint8).reshape(height, width)
    mask.setflags(write=False)
    top = int(mask.max())
    if top >= classes:
        raise SchemaError(f"mask contains class id {top} but header lists {classes} classes")
    return mask


def _inflate(payload: bytes, expected: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        # max_length caps the output: a corrupt stream cannot balloon past the declared size.
        data = inflater.decompress(payload, expected + 1)
    except zlib.error as exc:
        raise SchemaError(f"u8-zlib payload is corrupt: {exc}") from exc
    if len(data) <= expected and not inflater.eof:
        raise SchemaError(f"u8-zlib payload is truncated (stream ended after {len(data)} bytes)")
    if inflater.unused_data:
        raise SchemaError(f"u8-zlib payload has {len(inflater.unused_data)} trailing bytes after the stream")
    return data


# --------------------------------------------------------------------------- single-frame form
# The same message as ONE ZeroMQ frame, for subscribers that want ZMQ_CONFLATE (which keeps only
# the newest message per socket but breaks multipart messages):
#     b"latest/" + stream_id + b"\0" + 4-byte big-endian header length + header JSON + payload

LATEST_PREFIX = b"latest/"
_LENGTH_BYTES = 4


def latest_topic(stream_id: str) -> bytes:
    return LATEST_PREFIX + stream_id.encode("utf-8")


def to_single_frame(parts: Sequence[bytes]) -> bytes:
    """The three frames from :func:`encode` as one ``latest/`` frame."""
    topic, header, payload = parts
    stream_id = bytes(topic)[len(TOPIC_PREFIX):]
    if b"\0" in stream_id:
        raise SchemaError("stream_id must not contain NUL for the single-frame form")
    return LATEST_PREFIX + stream_id + b"\0" + len(header).to_bytes(_LENGTH_BYTES, "big") + header + payload


def decode_single_frame(frame: bytes) -> MaskMessage:
    """One ``latest/`` frame -> :class:`MaskMessage` (the same checks as :func:`decode`)."""
    frame = bytes(frame)
    if not frame.startswith(LATEST_PREFIX):
        raise SchemaError(f"single-frame message does not start with {LATEST_PREFIX!r}")
    end = frame.find(b"\0", len(LATEST_PREFIX))
    if end < 0 or len(frame) < end + 1 + _LENGTH_BYTES:
        raise SchemaError("single-frame message is truncated before its header")
    start = end + 1 + _LENGTH_BYTES
    length = int.from_bytes(frame[end + 1:start], "big")
    if length > MAX_HEADER_BYTES or len(frame) < start + length:
        raise SchemaError(f"single-frame message: header length {length} is out of range")
    topic = TOPIC_PREFIX + frame[len(LATEST_PREFIX):end]
    return decode([topic, frame[start:start + length], frame[start + length:]])
