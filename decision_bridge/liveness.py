"""The wire format of ``roadseg.stream`` messages: per-stream status and end of stream.

Shared by the publisher (:mod:`stream.liveness` sends them) and every subscriber, like
:mod:`decision_bridge.schema` is for masks. A message is two ZeroMQ frames::

    [topic, body_json_utf8]

* ``status/<stream_id>``: sent for every stream at a fixed period (``period_ms``), whether or
  not frames flow, so a subscriber can tell a slow stream from a dead or frozen publisher;
* ``eos/<stream_id>``: sent once when the stream ends (the recording finished, the camera
  failed for good, or roadseg stopped), after the stream's last mask, carrying ``final_seq``.

Same compatibility rules as masks (SCHEMA.md section 7): keys may be added within a version;
decoders ignore keys they do not know and reject versions they were not written for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from decision_bridge.wire import (
    SchemaError,
    check_schema,
    check_stream_header,
    check_topic,
    dump_json,
    load_json,
    split_message,
    take,
    take_optional,
)

STREAM_SCHEMA_NAME = "roadseg.stream"
STREAM_SCHEMA_VERSION = 1
SUPPORTED_STREAM_VERSIONS: tuple[int, ...] = (STREAM_SCHEMA_VERSION,)
STATUS_PREFIX = b"status/"
EOS_PREFIX = b"eos/"
STREAM_MESSAGE_PARTS = 2
# How often a status message goes out per stream: often enough that a subscriber declares a
# frozen publisher dead within 3 periods (0.6 s), rarely enough to cost nothing (~300 B each).
DEFAULT_STATUS_PERIOD_MS = 200.0
# What may end a stream, as ``eos.reason``.
EOS_REASONS = ("ended", "failed", "stopped")


class StreamEvent(StrEnum):
    STATUS = "status"
    EOS = "eos"


_PREFIXES = {StreamEvent.STATUS: STATUS_PREFIX, StreamEvent.EOS: EOS_PREFIX}


@dataclass(frozen=True, slots=True)
class StreamReport:
    """One stream's status (``kind=STATUS``) or its end (``kind=EOS``), at ``publish_mono_ns``."""

    kind: StreamEvent
    stream_id: str
    run_id: str  # the publisher run; equals the masks' run_id
    state: str  # connecting | live | stalled | reconnecting | ended | failed (as in mask headers)
    last_seq: int  # seq of the newest frame captured so far; -1 before the first. EOS: the final seq
    published: int  # masks of this stream published so far
    dropped: int  # frames of this stream dropped so far, all causes (every seq not published)
    fps: float | None  # the source's frame rate (recording, camera or replay rate); None: unknown
    mask_fps: float | None  # masks of this stream published per second so far; None before two
    live: bool
    max_age_ms: float | None
    period_ms: float  # the status period; a subscriber's alive timeout derives from it
    reconnects: int
    publish_mono_ns: int
    publish_wall_ns: int
    reason: str | None = None  # EOS only: ended | failed | stopped

    @property
    def final_seq(self) -> int:
        """EOS: the last seq this stream will ever have (-1: it captured nothing)."""
        return self.last_seq


def stream_topic(kind: StreamEvent, stream_id: str) -> bytes:
    return _PREFIXES[kind] + stream_id.encode("utf-8")


def encode_report(report: StreamReport) -> list[bytes]:
    _check(report)
    body = {
        "schema": STREAM_SCHEMA_NAME,
        "version": STREAM_SCHEMA_VERSION,
        "kind": report.kind.value,
        "stream_id": report.stream_id,
        "run_id": report.run_id,
        "state": report.state,
        "last_seq": report.last_seq,
        "published": report.published,
        "dropped": report.dropped,
        "fps": report.fps,
        "mask_fps": report.mask_fps,
        "live": report.live,
        "max_age_ms": report.max_age_ms,
        "period_ms": report.period_ms,
        "reconnects": report.reconnects,
        "publish_mono_ns": report.publish_mono_ns,
        "publish_wall_ns": report.publish_wall_ns,
        "reason": report.reason,
    }
    return [stream_topic(report.kind, report.stream_id), dump_json(body, "stream report")]


def is_stream_topic(topic: bytes) -> bool:
    return topic.startswith(STATUS_PREFIX) or topic.startswith(EOS_PREFIX)


def decode_report(parts: Sequence[bytes]) -> StreamReport:
    """Two received frames -> :class:`StreamReport`; :class:`SchemaError` says what is wrong."""
    topic, raw = split_message(parts, ("topic", "body"), "stream")
    report = report_from_json(load_json(raw))
    check_topic(topic, stream_topic(report.kind, report.stream_id), report.kind.value, report.stream_id)
    return report


def report_from_json(obj: Any) -> StreamReport:
    check_schema(obj, STREAM_SCHEMA_NAME, SUPPORTED_STREAM_VERSIONS)
    kind = take(obj, "kind", str)
    try:
        event = StreamEvent(kind)
    except ValueError:
        raise SchemaError(f"field kind: unknown {kind!r} (known: {', '.join(StreamEvent)})") from None
    report = StreamReport(
        kind=event,
        stream_id=take(obj, "stream_id", str),
        run_id=take(obj, "run_id", str),
        state=take(obj, "state", str),
        last_seq=take(obj, "last_seq", int),
        published=take(obj, "published", int),
        dropped=take(obj, "dropped", int),
        fps=take(obj, "fps", float, nullable=True),
        mask_fps=take(obj, "mask_fps", float, nullable=True),
        live=take(obj, "live", bool),
        max_age_ms=take(obj, "max_age_ms", float, nullable=True),
        period_ms=take(obj, "period_ms", float),
        reconnects=take(obj, "reconnects", int),
        publish_mono_ns=take(obj, "publish_mono_ns", int),
        publish_wall_ns=take(obj, "publish_wall_ns", int),
        reason=take_optional(obj, "reason", str, None),
    )
    _check(report)
    return report


def _check(r: StreamReport) -> None:
    """Invariants checked on both sides."""
    check_stream_header(r, seq_field="last_seq", min_seq=-1)
    for name in ("published", "dropped", "reconnects"):
        if getattr(r, name) < 0:
            raise SchemaError(f"field {name} must be >= 0, got {getattr(r, name)}")
    if not r.period_ms > 0:
        raise SchemaError(f"field period_ms must be > 0, got {r.period_ms}")
    for name in ("fps", "mask_fps"):
        value = getattr(r, name)
        if value is not None and not value > 0:
            raise SchemaError(f"field {name} must be > 0 or null, got {value}")
    if r.kind is StreamEvent.EOS and r.reason not in EOS_REASONS:
        raise SchemaError(f"field reason of an eos must be one of {', '.join(EOS_REASONS)}, got {r.reason!r}")
