"""Publish every segmentation mask to the vehicle's decision system (planner) over ZeroMQ.

``schema`` is the one wire-format module shared by both sides (see ``SCHEMA.md``),
``publisher`` the non-blocking XPUB side used by the pipeline, ``subscriber`` the
reference subscriber with per-stream health (alive / rate / valid).
"""

from decision_bridge.curve import CurveClient, CurveError, CurveServer
from decision_bridge.health import StreamStatus
from decision_bridge.liveness import StreamEvent, StreamReport, decode_report, encode_report
from decision_bridge.publisher import MaskPublisher, PublisherError
from decision_bridge.schema import (
    DEFAULT_ADDRESS,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    Encoding,
    IoUReport,
    MaskHeader,
    MaskMessage,
    SchemaError,
    StageTimings,
    decode,
    encode,
    encode_mask,
    encode_message,
    topic_for,
)
from decision_bridge.subscriber import MaskSubscriber

__all__ = [
    "DEFAULT_ADDRESS",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "CurveClient",
    "CurveError",
    "CurveServer",
    "Encoding",
    "IoUReport",
    "MaskHeader",
    "MaskMessage",
    "MaskPublisher",
    "MaskSubscriber",
    "PublisherError",
    "SchemaError",
    "StageTimings",
    "StreamEvent",
    "StreamReport",
    "StreamStatus",
    "decode",
    "decode_report",
    "encode",
    "encode_mask",
    "encode_message",
    "encode_report",
    "topic_for",
]
