"""Timing primitives for the benchmark harness.

Shared machines (and a laptop on battery) drift by 20-30 % over seconds, which
is more than the differences being measured. So model-only configurations are
timed *interleaved*, one call each per iteration in rotating order, and every
pipeline run is bracketed by model-only blocks of the same configuration: a
ratio is then taken between numbers that saw the same machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from models.backends.base import InferenceBackend
from stream.config import PipelineConfig
from stream.pipeline import Pipeline

WARMUP_CALLS = 3  # first calls pay for allocator growth, oneDNN/cuDNN kernel choice, graph capture
NS_PER_MS = 1e6


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency of one configuration at one batch size."""

    batch: int
    samples_ms: tuple[float, ...]

    @property
    def p50(self) -> float:
        return float(np.percentile(self.samples_ms, 50))

    @property
    def p99(self) -> float:
        return float(np.percentile(self.samples_ms, 99))

    @property
    def fps(self) -> float:
        """Frames per second at the median call time (robust to a stray slow call)."""
        return self.batch * 1000.0 / self.p50


def batch_of(frames: Sequence[np.ndarray], batch: int, index: int) -> list[np.ndarray]:
    """The index-th batch, cycling through the frames so consecutive calls see new images."""
    return [frames[(index * batch + j) % len(frames)] for j in range(batch)]


def _call_ms(backend: InferenceBackend, images: list[np.ndarray]) -> float:
    start = time.monotonic_ns()
    backend.infer(images)
    return (time.monotonic_ns() - start) / NS_PER_MS


def time_interleaved(
    backends: dict[str, InferenceBackend], frames: Sequence[np.ndarray], batch: int, repeats: int
) -> dict[str, LatencyStats]:
    """Time every backend on the same batches, one call each per iteration, rotating the
    order so none is always first (or always right after another's cache-thrashing)."""
    for backend in backends.values():
        for i in range(WARMUP_CALLS):
            backend.infer(batch_of(frames, batch, i))
    keys = list(backends)
    samples: dict[str, list[float]] = {key: [] for key in keys}
    for i in range(repeats):
        images = batch_of(frames, batch, i)
        shift = i % len(keys)
        for key in keys[shift:] + keys[:shift]:
            samples[key].append(_call_ms(backends[key], images))
    return {key: LatencyStats(batch, tuple(values)) for key, values in samples.items()}


class _Borrowed:
    """A backend lent to one pipeline run: the pipeline closes what its factory made, but this
    one is shared by the model-only blocks and the next runs, so closing it is a no-op."""

    def __init__(self, backend: InferenceBackend) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def close(self) -> None:
        pass


def run_pipeline(config: PipelineConfig, backend: InferenceBackend) -> dict[str, Any]:
    """One whole-pipeline run on an already-built (and warm) backend; its telemetry summary."""
    return asyncio.run(Pipeline(config, lambda: _Borrowed(backend)).run())  # type: ignore[arg-type,return-value]


@dataclass(frozen=True)
class PipelineRound:
    model_fps: float  # model-only fps around this run (mean of the blocks before and after)
    summary: dict[str, Any]

    @property
    def ratio(self) -> float:
        return float(self.summary["fps"]) / self.model_fps


def bracketed_rounds(
    config: PipelineConfig,
    backend: InferenceBackend,
    frames: Sequence[np.ndarray],
    batch: int,
    rounds: int,
    block: int,
) -> list[PipelineRound]:
    """``rounds`` pipeline runs, each between two model-only blocks of ``block`` calls."""

    def model_fps() -> float:
        return time_interleaved({"m": backend}, frames, batch, block)["m"].fps

    before = model_fps()
    out = []
    for _ in range(rounds):
        summary = run_pipeline(config, backend)
        after = model_fps()
        out.append(PipelineRound((before + after) / 2, summary))
        before = after
    return out


def median_round(rounds: list[PipelineRound]) -> PipelineRound:
    """The round with the median ratio (its latencies reported with it, not mixed across runs)."""
    ordered = sorted(rounds, key=lambda r: r.ratio)
    return ordered[len(ordered) // 2]


def model_latency_ms(summary: dict[str, Any]) -> float:
    """The model's own share of a frame's latency in a pipeline run: backend pre + inference + post (p50s)."""
    lat = summary["latency_ms"]
    return float(sum(lat[stage]["p50"] for stage in ("preprocess", "inference", "postprocess")))


def paced_config(base: PipelineConfig, streams: int, total_fps: float, load: float, frames: int) -> PipelineConfig:
    """Every stream replayed at an equal share of ``load`` x the measured pipeline throughput,
    so latency is measured below saturation (at saturation it is just queue length)."""
    rate = load * total_fps / streams
    return replace(base, replay_rate=rate, max_frames=frames)


def per_stream_frames(total: int, streams: int, minimum: int = 8) -> int:
    return max(minimum, -(-total // streams))

