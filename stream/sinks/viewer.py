"""The web viewer as a sink: each result is offered to the hub, which keeps only the newest frame
per stream and encodes it on its own thread (a slow viewer loses frames, counted by the hub, and
never slows the pipeline)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from stream.sinks import Result
from stream.stages import viewer_info
from web_viewer.app import ViewerServer
from web_viewer.hub import ViewerHub


class ViewerSink:
    name = "viewer"

    def __init__(self, hub: ViewerHub, server: ViewerServer, fps: Callable[[], float]) -> None:
        self.hub = hub
        self.server = server
        self._fps = fps
        self._closed = False

    @property
    def port(self) -> int:
        return self.server.port

    async def send(self, result: Result) -> None:
        frame = result.frame
        self.hub.offer(frame.source_id, frame.image, result.encoded.item.mask, viewer_info(result.header, self._fps()))

    def drops(self) -> Mapping[str, int]:
        return {}  # superseded frames are the hub's own count (/api/stats), not lost results

    async def close(self, *, aborted: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        await self.server.close()
        await self.hub.close()
