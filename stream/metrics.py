"""Prometheus metrics of a run, made with ``prometheus_client`` and served by the viewer at
``/metrics`` (text exposition format, for the Prometheus every fleet already runs).

Per-frame observations (stage latency histograms, frames, IoU) are fed by
:class:`stream.sinks.metrics.MetricsSink`; what the pipeline already counts (drops by cause,
stream state, reconnects, frame rates) is read from its status at scrape time by a collector,
so there is one source of truth and nothing is counted twice. Each run has its own registry:
two pipelines in one process (tests) do not share series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from decision_bridge.schema import MaskHeader
from models.classes import CLASS_NAMES
from stream.health import StreamState

NAMESPACE = "roadseg"
STAGES = ("queue", "preprocess", "inference", "postprocess")
# Seconds: a real-time frame lives between a few ms (GPU) and a second (CPU, large frames).
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
Status = Callable[[], Mapping[str, Mapping[str, Any]]]  # Pipeline.stream_status


class PipelineMetrics:
    def __init__(self, status: Status) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stage_seconds = Histogram(
            "stage_latency_seconds", "Time a published frame spent in each pipeline stage",
            ("stream", "stage"), namespace=NAMESPACE, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.end_to_end_seconds = Histogram(
            "end_to_end_latency_seconds", "Capture to publish, per published frame",
            ("stream",), namespace=NAMESPACE, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.published = Counter("frames_published", "Masks published", ("stream",), namespace=NAMESPACE,
                                 registry=self.registry)
        self.invalid = Counter("frames_invalid", "Masks published with valid=false, by reason",
                               ("stream", "reason"), namespace=NAMESPACE, registry=self.registry)
        self.iou = Gauge("iou", "IoU of the newest frame with ground truth, per category",
                         ("stream", "category"), namespace=NAMESPACE, registry=self.registry)
        self.mean_iou = Gauge("mean_iou", "Mean IoU of the newest frame with ground truth", ("stream",),
                              namespace=NAMESPACE, registry=self.registry)
        self.registry.register(_StatusCollector(status))

    def observe(self, header: MaskHeader, end_to_end_s: float) -> None:
        stream = header.stream_id
        timings = header.timings
        for stage, ms in zip(STAGES, (timings.queue_ms, timings.preprocess_ms, timings.inference_ms,
                                      timings.postprocess_ms), strict=True):
            self.stage_seconds.labels(stream, stage).observe(max(ms, 0.0) / 1e3)
        self.end_to_end_seconds.labels(stream).observe(max(end_to_end_s, 0.0))
        self.published.labels(stream).inc()
        if not header.valid:
            self.invalid.labels(stream, header.invalid_reason or "unknown").inc()
        if header.iou is not None:
            for name, value in zip(CLASS_NAMES, header.iou.per_class, strict=True):
                if value is not None:
                    self.iou.labels(stream, name).set(value)
            if header.iou.mean is not None:
                self.mean_iou.labels(stream).set(header.iou.mean)

    def exposition(self) -> bytes:
        """The text exposition of every metric (what ``/metrics`` serves)."""
        return generate_latest(self.registry)


class _StatusCollector:
    """Counters and gauges the pipeline keeps anyway, read at scrape time."""

    def __init__(self, status: Status) -> None:
        self._status = status

    def describe(self) -> list[Metric]:
        return []  # the families depend on the streams: not described ahead (no duplicate-name checks needed)

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        frames_in = CounterMetricFamily(f"{NAMESPACE}_frames_read", "Frames read from each source", labels=["stream"])
        dropped = CounterMetricFamily(f"{NAMESPACE}_frames_dropped", "Frames dropped, by stream and cause",
                                      labels=["stream", "cause"])
        reconnects = CounterMetricFamily(f"{NAMESPACE}_reconnects", "Live source reopenings", labels=["stream"])
        state = GaugeMetricFamily(f"{NAMESPACE}_stream_state", "1 for the stream's current state",
                                  labels=["stream", "state"])
        fps = GaugeMetricFamily(f"{NAMESPACE}_source_fps", "Source frame rate (nominal)", labels=["stream"])
        mask_fps = GaugeMetricFamily(f"{NAMESPACE}_mask_fps", "Masks published per second (measured)",
                                     labels=["stream"])
        age = GaugeMetricFamily(f"{NAMESPACE}_last_frame_age_seconds", "Age of the newest frame read",
                                labels=["stream"])
        for sid, entry in status.items():
            frames_in.add_metric([sid], entry.get("frames_in", 0))
            for cause, count in entry.get("dropped", {}).items():
                dropped.add_metric([sid, cause], count)
            reconnects.add_metric([sid], entry.get("reconnects", 0))
            for value in StreamState:
                state.add_metric([sid, value.value], 1.0 if entry.get("state") == value.value else 0.0)
            for family, key in ((fps, "fps"), (mask_fps, "mask_fps")):
                if entry.get(key) is not None:
                    family.add_metric([sid], entry[key])
            if entry.get("last_frame_age_ms") is not None:
                age.add_metric([sid], entry["last_frame_age_ms"] / 1e3)
        yield from (frames_in, dropped, reconnects, state, fps, mask_fps, age)
