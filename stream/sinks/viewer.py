"""The web viewer as a sink: each result is offered to the hub, which keeps only the newest frame
per stream and encodes it on its own thread (a slow viewer loses frames, counted by the hub, and
never slows the pipeline). The frame's telemetry (:func:`stream.stages.viewer_info`) goes with it,
with the stream's own recent frame rate."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

from stream.sinks import Result
from stream.stages import viewer_info
from web_viewer.app import ViewerServer
from web_viewer.hub import ViewerHub

# The frame rate shown with a frame: over this many of the stream's latest frames (about 2 s at 15 fps),
# so it follows a camera that slows down instead of averaging the whole run.
FPS_WINDOW = 30


class ViewerSink:
    name = "viewer"

    def __init__(self, hub: ViewerHub, server: ViewerServer, fps: Callable[[], float]) -> None:
        """``fps``: the whole pipeline's frame rate (all streams), sent as ``pipeline_fps``."""
        self.hub = hub
        self.server = server
        self._fps = fps
        self._published: dict[str, deque[int]] = {}  # stream -> publish times (ns) of its latest frames
        self._closed = False

    @property
    def port(self) -> int:
        return self.server.port

    async def send(self, result: Result) -> None:
        frame, header = result.frame, result.header
        times = self._published.setdefault(frame.source_id, deque(maxlen=FPS_WINDOW))
        times.append(header.publish_mono_ns)
        span_s = (times[-1] - times[0]) / 1e9
        fps = (len(times) - 1) / span_s if span_s > 0 else 0.0
        info = viewer_info(header, fps)
        info["pipeline_fps"] = round(self._fps(), 1)
        self.hub.offer(frame.source_id, frame.image, result.encoded.item.mask, info)

    def drops(self) -> Mapping[str, int]:
        return {}  # superseded frames are the hub's own count (/api/stats), not lost results

    async def close(self, *, aborted: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        await self.server.close()
        await self.hub.close()
