"""The wire format of ``roadseg.camera_info`` messages: a stream's camera file, so a subscriber can
project mask pixels itself (SCHEMA.md section 15.2).

Three ZeroMQ frames, sent once a second per stream that has a camera file, from the moment the
publisher binds::

    [b"camera/" + stream_id, header_json_utf8, camera_json]

``camera_json`` is the camera file in canonical form (compact, sorted keys, ASCII); its SHA-256 is the
header's ``camera_hash`` (``"sha256:" + hex``), which every mask of the stream names too. A subscriber
that meets a ``camera_hash`` it does not hold waits at most a second for this message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from decision_bridge.wire import (
    SchemaError,
    check_scalars,
    check_schema,
    check_topic,
    dump_json,
    load_json,
    split_message,
    take,
)

CAMERA_SCHEMA_NAME = "roadseg.camera_info"
CAMERA_SCHEMA_VERSION = 1
SUPPORTED_CAMERA_VERSIONS: tuple[int, ...] = (CAMERA_SCHEMA_VERSION,)
CAMERA_PREFIX = b"camera/"
CAMERA_MESSAGE_PARTS = 3
CAMERA_PERIOD_MS = 1000.0
MAX_CAMERA_BYTES = 1024 * 1024
HASH_PREFIX = "sha256:"


@dataclass(frozen=True, slots=True)
class CameraInfoHeader:
    stream_id: str
    run_id: str
    camera_hash: str  # "sha256:" + the hex digest of the camera frame
    period_ms: float  # how often it is sent
    publish_mono_ns: int
    publish_wall_ns: int


@dataclass(frozen=True, slots=True)
class CameraInfo:
    header: CameraInfoHeader
    camera_json: bytes  # verified: its hash is header.camera_hash
    camera: Mapping[str, Any]  # parsed (schema roadseg.camera, version 1: calibration/camera.py)


def camera_topic(stream_id: str) -> bytes:
    return CAMERA_PREFIX + stream_id.encode("utf-8")


def camera_hash(camera_json: bytes) -> str:
    return HASH_PREFIX + hashlib.sha256(camera_json).hexdigest()


def encode_camera_info(header: CameraInfoHeader, camera_json: bytes) -> list[bytes]:
    check_scalars(header, "")
    if camera_hash(camera_json) != header.camera_hash:
        raise SchemaError("camera_hash does not match the camera JSON")
    body = {"schema": CAMERA_SCHEMA_NAME, "version": CAMERA_SCHEMA_VERSION, "stream_id": header.stream_id,
            "run_id": header.run_id, "camera_hash": header.camera_hash, "period_ms": header.period_ms,
            "publish_mono_ns": header.publish_mono_ns, "publish_wall_ns": header.publish_wall_ns}
    return [camera_topic(header.stream_id), dump_json(body, "camera header"), camera_json]


def decode_camera_info(parts: Sequence[bytes]) -> CameraInfo:
    """Three received frames -> :class:`CameraInfo`; :class:`SchemaError` says what is wrong (a camera
    frame that does not hash to ``camera_hash`` included)."""
    topic, raw, body = split_message(parts, ("topic", "header", "camera"), "camera")
    obj = load_json(raw)
    check_schema(obj, CAMERA_SCHEMA_NAME, SUPPORTED_CAMERA_VERSIONS)
    header = CameraInfoHeader(
        stream_id=take(obj, "stream_id", str), run_id=take(obj, "run_id", str),
        camera_hash=take(obj, "camera_hash", str), period_ms=take(obj, "period_ms", float),
        publish_mono_ns=take(obj, "publish_mono_ns", int), publish_wall_ns=take(obj, "publish_wall_ns", int))
    check_topic(topic, camera_topic(header.stream_id), "camera", header.stream_id)
    if len(body) > MAX_CAMERA_BYTES:
        raise SchemaError(f"camera JSON is {len(body)} bytes, limit {MAX_CAMERA_BYTES}")
    if camera_hash(body) != header.camera_hash:
        raise SchemaError("the camera JSON does not hash to camera_hash")
    try:
        camera = json.loads(body.decode("ascii"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SchemaError(f"camera JSON is not canonical ASCII JSON: {exc}") from None
    if not isinstance(camera, dict):
        raise SchemaError("camera JSON must be an object")
    return CameraInfo(header, body, camera)


def _reject_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")
