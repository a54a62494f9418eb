"""The wire format of ``roadseg.bev`` messages: a bird's-eye grid of the road in metres (SCHEMA.md
section 15). Shared by publisher and subscribers.

Four ZeroMQ frames::

    [b"bev/" + stream_id, header_json_utf8, classes_grid, road_grid]

* ``classes_grid``: ``cells_y * cells_x`` bytes after decoding (``encoding`` as masks), row-major: row
  ``j`` is ``y = origin_y_m + (j + 0.5) * resolution_m`` (right to left), column ``i`` is
  ``x = origin_x_m + (i + 0.5) * resolution_m`` (near to far), in the ISO 8855 vehicle frame (x forward,
  y left). Each byte is a category id of the mask's ``classes``, or ``unknown_id`` (255): a cell the
  camera cannot see (behind or beside it, above its horizon, under the bonnet).
* ``road_grid``: when ``road`` is true, the same layout holding 1 (road), 0 (not road) or 255
  (unknown); when false (a model without a road layer), an empty frame.

Sent after the mask (and drivable space) of the same frame, same ``seq``, for streams started with a
camera file that has a ground plane (``roadseg run --camera STREAM=FILE``).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from decision_bridge.schema import MAX_CLASSES, ZLIB_LEVEL, Encoding, decode_layer
from decision_bridge.wire import (
    SchemaError,
    check_schema,
    check_stream_header,
    check_topic,
    dump_json,
    load_json,
    split_message,
    take,
    take_enum,
    take_list,
)

BEV_SCHEMA_NAME = "roadseg.bev"
BEV_SCHEMA_VERSION = 1
SUPPORTED_BEV_VERSIONS: tuple[int, ...] = (BEV_SCHEMA_VERSION,)
BEV_PREFIX = b"bev/"
BEV_MESSAGE_PARTS = 4
UNKNOWN_ID = 255
VEHICLE_FRAME = "vehicle"  # ISO 8855: x forward, y left, z up, origin on the road (the camera file's)
MAX_CELLS = 4096  # per side
_PART_NAMES = ("topic", "header", "classes", "road")  # BEV_MESSAGE_PARTS of them


@dataclass(frozen=True, slots=True)
class BevHeader:
    stream_id: str
    run_id: str
    seq: int  # the frame's: the same as its mask's
    capture_mono_ns: int
    capture_wall_ns: int
    publish_mono_ns: int
    publish_wall_ns: int
    cells_x: int  # columns, along x (forward)
    cells_y: int  # rows, along y (left)
    resolution_m: float  # cell side
    origin_x_m: float  # the outer corner of cell (row 0, column 0): nearest, rightmost
    origin_y_m: float
    encoding: Encoding
    classes: tuple[str, ...]  # the mask's class table: ids in classes_grid index it
    road: bool  # road_grid is present
    valid: bool  # as the mask's: false means do not use
    camera_hash: str  # the camera file that made the grid (SCHEMA.md 15.2)
    known_fraction: float  # share of cells the camera sees (not unknown)
    frame: str = VEHICLE_FRAME
    unknown_id: int = UNKNOWN_ID


@dataclass(frozen=True, slots=True)
class BevMessage:
    header: BevHeader
    classes: np.ndarray  # (cells_y, cells_x) uint8, read-only
    road: np.ndarray | None  # (cells_y, cells_x) uint8 0/1/255, read-only; None without a road layer


def bev_topic(stream_id: str) -> bytes:
    return BEV_PREFIX + stream_id.encode("utf-8")


def encode_bev(header: BevHeader, classes: np.ndarray, road: np.ndarray | None) -> list[bytes]:
    _check(header)
    shape = (header.cells_y, header.cells_x)
    if classes.shape != shape:
        raise SchemaError(f"classes grid shape {classes.shape} != {shape}")
    if (road is not None) != header.road or (road is not None and road.shape != shape):
        raise SchemaError(f"road grid {None if road is None else road.shape} does not match road={header.road}")
    body = {
        "schema": BEV_SCHEMA_NAME, "version": BEV_SCHEMA_VERSION, "stream_id": header.stream_id,
        "run_id": header.run_id, "seq": header.seq, "capture_mono_ns": header.capture_mono_ns,
        "capture_wall_ns": header.capture_wall_ns, "publish_mono_ns": header.publish_mono_ns,
        "publish_wall_ns": header.publish_wall_ns, "frame": header.frame, "cells_x": header.cells_x,
        "cells_y": header.cells_y, "resolution_m": header.resolution_m, "origin_x_m": header.origin_x_m,
        "origin_y_m": header.origin_y_m, "encoding": header.encoding.value, "unknown_id": header.unknown_id,
        "classes": list(header.classes), "road": header.road, "valid": header.valid,
        "camera_hash": header.camera_hash, "known_fraction": header.known_fraction,
    }
    return [bev_topic(header.stream_id), dump_json(body, "bev header"), _encode_grid(classes, header.encoding),
            b"" if road is None else _encode_grid(road, header.encoding)]


def _encode_grid(grid: np.ndarray, encoding: Encoding) -> bytes:
    # As masks are encoded (section 4), but the values go up to 255 (unknown).
    raw = np.ascontiguousarray(grid, dtype=np.uint8)
    return raw.tobytes() if encoding is Encoding.RAW else zlib.compress(raw.data, ZLIB_LEVEL)


def decode_bev(parts: Sequence[bytes]) -> BevMessage:
    """Four received frames -> :class:`BevMessage`; :class:`SchemaError` says what is wrong."""
    topic, raw, classes_bytes, road_bytes = split_message(parts, _PART_NAMES, "bev")
    header = bev_header_from_json(load_json(raw))
    check_topic(topic, bev_topic(header.stream_id), "bev", header.stream_id)
    classes = _decode_grid(classes_bytes, header, "classes")
    if classes[classes != UNKNOWN_ID].max(initial=0) >= len(header.classes):
        raise SchemaError(f"classes grid holds an id >= {len(header.classes)} classes (and not {UNKNOWN_ID})")
    road = None
    if header.road:
        road = _decode_grid(road_bytes, header, "road")
        if not np.isin(road, (0, 1, UNKNOWN_ID)).all():
            raise SchemaError(f"road grid holds values other than 0, 1 and {UNKNOWN_ID}")
    elif road_bytes:
        raise SchemaError(f"road is false but the road grid frame has {len(road_bytes)} bytes")
    return BevMessage(header, classes, road)


def _decode_grid(payload: bytes, header: BevHeader, what: str) -> np.ndarray:
    try:
        return decode_layer(payload, header.encoding, header.cells_y, header.cells_x, MAX_CLASSES)
    except SchemaError as exc:
        raise SchemaError(f"{what} grid: {exc}") from None


def bev_header_from_json(obj: Mapping[str, Any]) -> BevHeader:
    check_schema(obj, BEV_SCHEMA_NAME, SUPPORTED_BEV_VERSIONS)
    enc = take_enum(obj, "encoding", Encoding)
    header = BevHeader(
        stream_id=take(obj, "stream_id", str), run_id=take(obj, "run_id", str), seq=take(obj, "seq", int),
        capture_mono_ns=take(obj, "capture_mono_ns", int), capture_wall_ns=take(obj, "capture_wall_ns", int),
        publish_mono_ns=take(obj, "publish_mono_ns", int), publish_wall_ns=take(obj, "publish_wall_ns", int),
        cells_x=take(obj, "cells_x", int), cells_y=take(obj, "cells_y", int),
        resolution_m=take(obj, "resolution_m", float), origin_x_m=take(obj, "origin_x_m", float),
        origin_y_m=take(obj, "origin_y_m", float), encoding=enc, classes=tuple(take_list(obj, "classes", str)),
        road=take(obj, "road", bool), valid=take(obj, "valid", bool), camera_hash=take(obj, "camera_hash", str),
        known_fraction=take(obj, "known_fraction", float), frame=take(obj, "frame", str),
        unknown_id=take(obj, "unknown_id", int),
    )
    _check(header)
    return header


def _check(h: BevHeader) -> None:
    check_stream_header(h)
    for name in ("cells_x", "cells_y"):
        if not 0 < getattr(h, name) <= MAX_CELLS:
            raise SchemaError(f"field {name} out of range (1..{MAX_CELLS}), got {getattr(h, name)}")
    if not h.resolution_m > 0:
        raise SchemaError(f"field resolution_m must be > 0, got {h.resolution_m}")
    if h.unknown_id != UNKNOWN_ID:
        raise SchemaError(f"field unknown_id must be {UNKNOWN_ID} in version {BEV_SCHEMA_VERSION}, got {h.unknown_id}")
    if not 0 < len(h.classes) < UNKNOWN_ID:
        raise SchemaError(f"field classes must list 1..{UNKNOWN_ID - 1} names, got {len(h.classes)}")
    if not 0.0 <= h.known_fraction <= 1.0:
        raise SchemaError(f"field known_fraction must lie in 0..1, got {h.known_fraction}")
