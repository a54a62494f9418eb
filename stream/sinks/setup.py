"""Opening a run's outputs, before the model loads: the recording folder is checked, the bridge
and the viewer bind (so a bad folder, a taken port or a bad address fails in well under a
second), then the sinks are listed in the order each result reaches them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.clock import Clock
from stream.config import PipelineConfig
from stream.geometry import StreamGeometry
from stream.metrics import PipelineMetrics
from stream.outputs import start_viewer
from stream.sinks import Sink
from stream.sinks.bridge import BridgeSink
from stream.sinks.metrics import MetricsSink
from stream.sinks.recorder import RecorderSink
from stream.sinks.telemetry import TelemetrySink
from stream.sinks.viewer import ViewerSink
from stream.sources import FrameSource
from stream.telemetry import Telemetry
from web_viewer.segmentation import Segmenter


@dataclass(frozen=True)
class RunHooks:
    """What the outputs read from the running pipeline."""

    run_id: str
    status: Callable[[], dict[str, Any]]  # Pipeline.stream_status
    clock: Clock
    telemetry: Telemetry
    metrics: PipelineMetrics
    segmenter: Segmenter  # the viewer's POST /api/segment, on the model's thread
    ready: Callable[[], bool]  # the model is loaded (/readyz)
    geometry: StreamGeometry | None = None  # --camera: camera files for the bridge, bird's-eye grids for the viewer


@dataclass
class Outputs:
    sinks: list[Sink] = field(default_factory=list)  # in the order each result reaches them: the bridge first
    bridge: BridgeSink | None = None
    viewer: ViewerSink | None = None

    async def close(self, *, aborted: bool) -> None:
        """The viewer first (its clients are told at once), the bridge last: its end-of-stream
        messages follow every mask."""
        for sink in reversed(self.sinks):
            with contextlib.suppress(Exception):
                await sink.close(aborted=aborted)


async def open_outputs(config: PipelineConfig, sources: Sequence[FrameSource], hooks: RunHooks) -> Outputs:
    ids = [source.source_id for source in sources]
    if config.record:
        config.record.check(ids)
    outputs = Outputs()
    try:
        if config.zmq_address:
            outputs.bridge = BridgeSink.open(
                config.zmq_address, fallback=config.zmq_fallback, mode=config.zmq_mode, curve=config.zmq_curve,
                stream_ids=ids, run_id=hooks.run_id, status=hooks.status, clock=hooks.clock,
                max_age_ms=config.max_age_ms, cameras=hooks.geometry.camera_files() if hooks.geometry else None)
            outputs.sinks.append(outputs.bridge)
        outputs.sinks += [TelemetrySink(hooks.telemetry, hooks.clock), MetricsSink(hooks.metrics, hooks.clock)]
        if config.viewer:
            bev = hooks.geometry  # /api/bev: the bird's-eye grids of streams with a camera file
            hub, server = await start_viewer(config.viewer, hooks.status, segmenter=hooks.segmenter, bev=bev,
                                             metrics=hooks.metrics.exposition, security=config.viewer_security,
                                             ready=hooks.ready, fallback=config.viewer_fallback,
                                             telemetry=hooks.telemetry.live_summary)
            outputs.viewer = ViewerSink(hub, server, hooks.telemetry.fps)
            outputs.sinks.append(outputs.viewer)
        if config.record:
            outputs.sinks.append(RecorderSink(config.record, {s.source_id: s.nominal_fps for s in sources},
                                              _run_info(config, sources, hooks.run_id)))
    except BaseException:
        await outputs.close(aborted=True)  # e.g. the viewer's port is taken: the bridge bound already
        raise
    return outputs


def _run_info(config: PipelineConfig, sources: Sequence[FrameSource], run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "model": config.model, "sources": {s.source_id: s.spec for s in sources}}
