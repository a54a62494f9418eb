"""Telemetry as a sink: per-frame, per-stage latency and IoU counts of every published frame.
It comes after the bridge, so its clock reading is the moment the mask was handed to ZeroMQ
(in lossless mode: accepted by every subscriber's queue)."""

from __future__ import annotations

from collections.abc import Mapping

from stream.clock import Clock
from stream.sinks import Result
from stream.stages import frame_record
from stream.telemetry import Telemetry


class TelemetrySink:
    name = "telemetry"

    def __init__(self, telemetry: Telemetry, clock: Clock) -> None:
        self.telemetry = telemetry
        self._clock = clock

    async def send(self, result: Result) -> None:
        sent_ns = self._clock.now_ns()
        self.telemetry.record(frame_record(result.encoded, result.header, sent_ns), sent_ns)

    def drops(self) -> Mapping[str, int]:
        return {}

    async def close(self, *, aborted: bool = False) -> None:
        pass
