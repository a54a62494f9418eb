"""Browser viewer: latest-frame fan-out of annotated frames over a WebSocket.

Typical use on the pipeline's event loop::

    hub = ViewerHub()
    server = ViewerServer(hub, *parse_bind("127.0.0.1:8080"))
    port = await server.start()          # also starts the hub's encoder
    ...
    hub.offer(stream_id, image, mask, {"seq": seq, "latency_ms": ..., "fps": ...})
    ...
    await server.close()
    await hub.close()
"""

from web_viewer.app import BindError, ViewerError, ViewerServer, parse_bind
from web_viewer.hub import ViewerHub
from web_viewer.render import pack_frame, unpack_frame

__all__ = [
    "BindError",
    "ViewerError",
    "ViewerHub",
    "ViewerServer",
    "pack_frame",
    "parse_bind",
    "unpack_frame",
]
