"""Prometheus metrics as a sink: each published frame's stage latencies, validity and IoU go into
the run's histograms and gauges (:mod:`stream.metrics`; a few microseconds, on the loop)."""

from __future__ import annotations

from collections.abc import Mapping

from stream.clock import Clock
from stream.metrics import PipelineMetrics
from stream.sinks import Result


class MetricsSink:
    name = "metrics"

    def __init__(self, metrics: PipelineMetrics, clock: Clock) -> None:
        self.metrics = metrics
        self._clock = clock

    async def send(self, result: Result) -> None:
        self.metrics.observe(result.header, (self._clock.now_ns() - result.frame.capture_ns) / 1e9)

    def drops(self) -> Mapping[str, int]:
        return {}

    async def close(self, *, aborted: bool = False) -> None:
        pass
