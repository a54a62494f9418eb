"""The bird's-eye grids of streams run with a camera file that has a ground plane (``roadseg run --camera``):

* ``GET /api/bev``: ``{"streams": [...]}``, the streams that have a grid now;
* ``GET /api/bev/<stream>.png``: that stream's newest grid as a colour PNG (forward up, left on the left,
  unknown cells dark, a tick every 10 m); 404 for other streams and before the first grid.

The token rules of every API route apply (:mod:`web_viewer.security`); the page's requests carry its cookie.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiohttp import web


class BevSource(Protocol):
    def bev_streams(self) -> list[str]:
        """The streams with a grid now."""

    def bev_png(self, stream_id: str) -> bytes | None:
        """The stream's newest grid as PNG, or None."""


def add_bev_routes(app: web.Application, source: BevSource | None) -> None:
    async def streams(_request: web.Request) -> web.Response:
        return web.json_response({"streams": source.bev_streams() if source is not None else []})

    async def png(request: web.Request) -> web.Response:
        stream = request.match_info["stream"]
        # A PNG of a 400 x 200 grid takes a millisecond or two: off the loop all the same.
        body = None if source is None else await asyncio.get_running_loop().run_in_executor(
            None, source.bev_png, stream)
        if body is None:
            raise web.HTTPNotFound(text=f"no bird's-eye grid for stream {stream!r}: not run with a camera file "
                                        "that has a ground plane, or no frame yet")
        return web.Response(body=body, content_type="image/png", headers={"Cache-Control": "no-store"})

    app.router.add_get("/api/bev", streams)
    app.router.add_get("/api/bev/{stream}.png", png)
