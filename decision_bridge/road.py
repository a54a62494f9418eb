"""The wire format of ``roadseg.road`` messages: drivable space for planners that want less than
a full mask. Shared by publisher and subscribers (SCHEMA.md section 14).

Four ZeroMQ frames::

    [b"road/" + stream_id, header_json_utf8, free_rows, road_layer]

* ``free_rows``: per image column, as uint16 little-endian (``width`` values), the topmost row of
  the unbroken run of road pixels that starts at the bottom edge (``height``: no road at the
  bottom of that column). Row 0 is the top of the image.
* ``road_layer``: the road-only layer (road separated from sidewalk and parking), one byte per
  pixel, 1 road / 0 not, row-major, ``layer_height`` x ``layer_width`` (the mask's size after
  ``--mask-scale``), encoded like masks (``u8-raw`` or ``u8-zlib``).

Sent right after the mask of the same frame (same ``seq``), only by models with a road class and
backends that produce the layer; the mask header's ``classes`` and ``seq`` rules apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from decision_bridge.schema import Encoding, decode_layer, encode_mask
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

ROAD_SCHEMA_NAME = "roadseg.road"
ROAD_SCHEMA_VERSION = 1
SUPPORTED_ROAD_VERSIONS: tuple[int, ...] = (ROAD_SCHEMA_VERSION,)
ROAD_PREFIX = b"road/"
ROAD_MESSAGE_PARTS = 4
FREE_ROWS_DTYPE = np.dtype("<u2")
_PART_NAMES = ("topic", "header", "free_rows", "road")  # ROAD_MESSAGE_PARTS of them


@dataclass(frozen=True, slots=True)
class RoadHeader:
    stream_id: str
    run_id: str
    seq: int  # the frame's seq: the same as its mask's
    capture_mono_ns: int
    publish_mono_ns: int
    publish_wall_ns: int
    height: int  # of the frame: free_rows values are rows of it
    width: int  # of the frame: free_rows has one value per column
    layer_height: int  # of the road layer payload (the mask's size after --mask-scale)
    layer_width: int
    encoding: Encoding
    valid: bool  # as the mask's: false means do not use
    category_fractions: tuple[float, ...]  # share of the frame per category, in the mask's class order
    road_fraction: float  # share of the frame that is road


@dataclass(frozen=True, slots=True)
class RoadMessage:
    header: RoadHeader
    free_rows: np.ndarray  # (width,) int, read-only
    road: np.ndarray  # (layer_height, layer_width) bool, read-only


def road_topic(stream_id: str) -> bytes:
    return ROAD_PREFIX + stream_id.encode("utf-8")


def encode_road(header: RoadHeader, free_rows: np.ndarray, road: np.ndarray) -> list[bytes]:
    _check(header)
    rows = np.asarray(free_rows)
    if rows.shape != (header.width,) or rows.min(initial=0) < 0 or rows.max(initial=0) > header.height:
        raise SchemaError(f"free_rows must be {header.width} rows in 0..{header.height}, got shape {rows.shape}")
    if road.shape != (header.layer_height, header.layer_width):
        raise SchemaError(f"road layer shape {road.shape} != {header.layer_height}x{header.layer_width}")
    body = {
        "schema": ROAD_SCHEMA_NAME, "version": ROAD_SCHEMA_VERSION, "stream_id": header.stream_id,
        "run_id": header.run_id, "seq": header.seq, "capture_mono_ns": header.capture_mono_ns,
        "publish_mono_ns": header.publish_mono_ns, "publish_wall_ns": header.publish_wall_ns,
        "height": header.height, "width": header.width, "layer_height": header.layer_height,
        "layer_width": header.layer_width, "encoding": header.encoding.value, "valid": header.valid,
        "category_fractions": list(header.category_fractions), "road_fraction": header.road_fraction,
    }
    payload = encode_mask(road.astype(np.uint8), header.encoding)
    return [road_topic(header.stream_id), dump_json(body, "road header"), rows.astype(FREE_ROWS_DTYPE).tobytes(),
            payload]


def decode_road(parts: Sequence[bytes]) -> RoadMessage:
    """Four received frames -> :class:`RoadMessage`; :class:`SchemaError` says what is wrong."""
    topic, raw, rows_bytes, payload = split_message(parts, _PART_NAMES, "road")
    header = road_header_from_json(load_json(raw))
    check_topic(topic, road_topic(header.stream_id), "road", header.stream_id)
    if len(rows_bytes) != header.width * FREE_ROWS_DTYPE.itemsize:
        raise SchemaError(f"free_rows is {len(rows_bytes)} bytes, expected {header.width} uint16 values")
    rows = np.frombuffer(rows_bytes, FREE_ROWS_DTYPE)
    if rows.max(initial=0) > header.height:
        raise SchemaError(f"free_rows holds row {int(rows.max())} beyond the frame height {header.height}")
    layer = decode_layer(payload, header.encoding, header.layer_height, header.layer_width, classes=2)
    road = layer.astype(bool)
    road.setflags(write=False)
    return RoadMessage(header, rows, road)


def road_header_from_json(obj: Mapping[str, Any]) -> RoadHeader:
    check_schema(obj, ROAD_SCHEMA_NAME, SUPPORTED_ROAD_VERSIONS)
    enc = take_enum(obj, "encoding", Encoding)
    header = RoadHeader(
        stream_id=take(obj, "stream_id", str), run_id=take(obj, "run_id", str), seq=take(obj, "seq", int),
        capture_mono_ns=take(obj, "capture_mono_ns", int), publish_mono_ns=take(obj, "publish_mono_ns", int),
        publish_wall_ns=take(obj, "publish_wall_ns", int), height=take(obj, "height", int),
        width=take(obj, "width", int), layer_height=take(obj, "layer_height", int),
        layer_width=take(obj, "layer_width", int), encoding=enc, valid=take(obj, "valid", bool),
        category_fractions=tuple(take_list(obj, "category_fractions", float)),
        road_fraction=take(obj, "road_fraction", float),
    )
    _check(header)
    return header


def _check(h: RoadHeader) -> None:
    check_stream_header(h)
    for name in ("height", "width", "layer_height", "layer_width"):
        if not 0 < getattr(h, name) <= MAX_ROAD_SIDE:
            raise SchemaError(f"field {name} out of range (1..{MAX_ROAD_SIDE}), got {getattr(h, name)}")
    if not all(0.0 <= f <= 1.0 for f in (*h.category_fractions, h.road_fraction)):
        raise SchemaError("fractions must lie in 0..1")


MAX_ROAD_SIDE = 16384
