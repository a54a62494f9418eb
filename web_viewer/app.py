"""The viewer's HTTP side: a static page, the ``/ws`` frame stream and small JSON endpoints.

Routes: ``/`` (the page), ``/static/...`` (its JS/CSS), ``/ws`` (WebSocket, see
:mod:`web_viewer.hub` for the protocol), ``/api/stats`` (hub counters: clients, frames, quality
tiers, encode cost), ``/api/streams`` (per-stream state and drops), ``/api/telemetry`` (per-stream
stage latency percentiles, rate and IoU so far), ``/metrics`` (Prometheus), ``/healthz``, and
``POST /api/segment`` with its upload page ``/segment`` (one image in, its segmentation out:
:mod:`web_viewer.segment_api`). Everything is served from this package: no CDN, works offline.
``/readyz``: 200 once the model is loaded and a stream is live. Who may use which route:
:mod:`web_viewer.security`; connection limits: :mod:`web_viewer.connections`.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from web_viewer.bev_api import BevSource, add_bev_routes
from web_viewer.connections import HEADER_TIMEOUT_S, ConnectionGuard, GuardedSite, access_log_kwargs
from web_viewer.hub import ViewerHub
from web_viewer.render import json_safe
from web_viewer.security import ViewerSecurity, origin_matches_host, security_middleware
from web_viewer.segment_api import SegmentApi
from web_viewer.segmentation import Segmenter

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# Pings detect viewers that vanished without closing (laptop lid, Wi-Fi drop) or stopped
# reading: without a pong within HEARTBEAT_S / 2 of a ping, the slot is freed.
HEARTBEAT_S = 5.0
# The page never sends anything big; a tiny limit keeps a hostile client cheap.
MAX_CLIENT_MSG_BYTES = 4096
# The send queue per viewer socket. Every byte queued ahead of a frame makes it
# late, and the heartbeat's ping waits behind them too: a 512 KiB kernel buffer
# (SO_SNDBUF 256 KiB, doubled by Linux) meant 1.9 s of lag at 300 kB/s and a
# dropped viewer at 150 kB/s (benchmarks.viewer_link). So: at most
# WS_NOTSENT_LOWAT_BYTES not yet sent in the kernel (what is in flight is the
# link's business, so fast links keep their throughput), at most
# WS_TRANSPORT_HIGH_BYTES in asyncio's buffer, and aiohttp waits for that to
# drain after every frame (its default waits every 64 KiB), so the hub's
# newest-frame mailbox, not a buffer, absorbs a slow link.
WS_NOTSENT_LOWAT_BYTES = 16 * 1024
WS_TRANSPORT_HIGH_BYTES = 16 * 1024
WS_WRITER_LIMIT_BYTES = 1
# Where TCP_NOTSENT_LOWAT is missing: bound the whole kernel buffer instead.
WS_SEND_BUFFER_BYTES = 64 * 1024
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the text exposition format
# /api/telemetry computes percentiles; every open page polls it each second: serve one answer this long.
TELEMETRY_CACHE_S = 0.5
# Server shutdown waits this long for in-flight HTTP requests (viewers are closed first).
SHUTDOWN_TIMEOUT_S = 2.0
# No CDN and no inline code: the page may only talk to us; frames are drawn from blobs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class ViewerError(RuntimeError):
    """The viewer cannot start (port in use, bad bind address, ...)."""


class BindError(ViewerError, ValueError):
    """A malformed ``HOST:PORT`` (a ValueError too, so argparse ``type=`` reports it)."""


def parse_bind(spec: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:8080"`` for IPv6) -> ``(host, port)``; port 0 = any free port.

    ``"off"`` is the caller's business (it means: no viewer) and is rejected here.
    """
    text = spec.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise BindError(f"viewer bind {spec!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        _check_ipv6(spec, host)
    elif ":" in host:
        raise BindError(f"viewer bind {spec!r}: write IPv6 hosts in brackets, e.g. [::1]:8080")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise BindError(f"viewer bind {spec!r}: port must be an integer in 0..65535, got {port_text!r}")
    if any(ch.isspace() for ch in host):
        raise BindError(f"viewer bind {spec!r}: host must not contain spaces")
    return host, int(port_text)


def _check_ipv6(spec: str, host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise BindError(f"viewer bind {spec!r}: {host!r} is not an IPv6 address") from None


def _origin_allowed(request: web.Request) -> bool:
    """Refuse cross-site WebSockets: any web page could otherwise watch our cameras.

    Browsers always send Origin; tools (tests, curl) usually do not and are allowed. (The
    security middleware checks this too, with the Host allow-list; malformed: refused, no 500.)
    """
    return origin_matches_host(request)


class ViewerServer:
    """aiohttp server for a :class:`ViewerHub`; ``start()`` also starts the hub's encoder."""

    def __init__(self, hub: ViewerHub, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 security: ViewerSecurity | None = None, ready: Callable[[], bool] | None = None,
                 header_timeout_s: float = HEADER_TIMEOUT_S,
                 status: Callable[[], dict[str, Any]] | None = None, segmenter: Segmenter | None = None,
                 bev: BevSource | None = None,
                 metrics: Callable[[], bytes] | None = None,
                 telemetry: Callable[[], dict[str, Any]] | None = None) -> None:
        self.hub = hub
        self._status = status  # per-stream health and accounting, for /api/streams
        self._bev = bev  # the streams' newest bird's-eye grids, for /api/bev (stream.geometry.StreamGeometry)
        self._metrics = metrics  # the Prometheus text exposition, for /metrics; None: 404
        # Per-stream stage latency percentiles etc. (Telemetry.live_summary), for /api/telemetry; None: empty.
        self._telemetry = telemetry
        self._telemetry_cache: tuple[float, bytes] | None = None
        # POST /api/segment and the /segment upload page (web_viewer.segment_api); None: 503, no model.
        self.segment_api = SegmentApi(segmenter, origin_allowed=_origin_allowed)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._closed = False
        self._ready = ready  # the model is loaded (/readyz); None: no model to wait for
        # Token, Host allow-list, Origin (web_viewer.security): resolved once, a token made here if needed.
        self.policy = (security or ViewerSecurity()).resolve(host)
        self.guard = ConnectionGuard(header_timeout_s=header_timeout_s)  # half-sent requests
        self._header_timeout_s = header_timeout_s

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def page_url(self) -> str:
        """:attr:`url` with the token, if one is needed (what a browser opens)."""
        return f"{self.url}?token={self.policy.token}" if self.policy.token else self.url

    async def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0). Raises ViewerError."""
        if self._runner is not None or self._closed:
            raise ViewerError("ViewerServer.start() may be called once")
        self.hub.start()
        # keepalive_timeout: a kept-alive connection idle or half-way through its next request
        # is closed as late as a first request without complete headers (ConnectionGuard).
        runner = web.AppRunner(self._make_app(), handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                               keepalive_timeout=self._header_timeout_s, **access_log_kwargs())
        await runner.setup()
        try:
            await GuardedSite(runner, self.host, self.port, self.guard).start()
        except OSError as exc:
            await runner.cleanup()
            raise ViewerError(self._bind_error_text(exc)) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("viewer: serving on %s", self.url)
        self._log_access_policy()
        return self.port

    def _log_access_policy(self) -> None:
        if self.policy.generated:
            # A wildcard address is no place to browse to: name this machine instead.
            host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
            host = f"[{host}]" if ":" in host else host
            url = f"http://{host}:{self.port}/?token={self.policy.token}"
            log.warning("viewer: listening beyond loopback, so it needs a token; open %s (this token was made "
                        "for this run: --viewer-token sets your own)", url)
        elif self.policy.exposed:
            log.warning("viewer: --viewer-insecure: ANYONE who can reach %s can watch the cameras and use "
                        "the API, with no token", self.url)

    def _bind_error_text(self, exc: OSError) -> str:
        where = f"{self.host}:{self.port}"
        if exc.errno == errno.EADDRINUSE:
            return f"viewer cannot listen on {where}: address already in use (pick another port or 'off')"
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"viewer cannot listen on {where}: {self.host} is not an address of this machine"
        if isinstance(exc, socket.gaierror):
            return f"viewer cannot listen on {where}: cannot resolve host {self.host!r}"
        return f"viewer cannot listen on {where}: {exc.strerror or exc}"

    async def close(self) -> None:
        """Stop serving (idempotent). The hub stays usable; close it separately."""
        if self._closed:
            return
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ---------------------------------------------------------------- app

    def _make_app(self) -> web.Application:
        # Outermost first: the guard sees every request, the headers go on every answer (refusals too).
        app = web.Application(middlewares=[self.guard.middleware, _security_headers,
                                           security_middleware(self.policy)])
        app.router.add_get("/", self._index)
        # Route names: security.PUBLIC_ROUTES (served without a token) are the static files and the probes.
        app.router.add_static("/static/", STATIC_DIR, append_version=False, name="static")
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/api/stats", self._stats)
        app.router.add_get("/api/streams", self._streams)
        app.router.add_get("/api/telemetry", self._telemetry_page)
        app.router.add_get("/healthz", self._healthz, name="healthz")
        app.router.add_get("/readyz", self._readyz, name="readyz")
        if self._metrics is not None:
            app.router.add_get("/metrics", self._metrics_page)
        self.segment_api.add_routes(app)
        add_bev_routes(app, self._bev)
        # Open WebSocket handlers would otherwise hold shutdown for the whole timeout.
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, _app: web.Application) -> None:
        await self.hub.close_clients()

    async def _index(self, _request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.hub.stats)

    async def _streams(self, _request: web.Request) -> web.Response:
        """Every stream's state (connecting, live, stalled, ...), reconnects, frame age and drops:
        what the page shows for a camera that sends no frames."""
        return web.json_response(self._status() if self._status else {})

    async def _telemetry_page(self, _request: web.Request) -> web.Response:
        """Per-stream stage latency percentiles, frame rate and IoU so far (the page's telemetry panel)."""
        now = asyncio.get_running_loop().time()
        cached = self._telemetry_cache
        if cached is None or now - cached[0] > TELEMETRY_CACHE_S:
            body = self._telemetry() if self._telemetry is not None else {"streams": {}}
            cached = self._telemetry_cache = (now, json.dumps(json_safe(body), allow_nan=False).encode())
        return web.Response(body=cached[1], content_type="application/json")

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        assert self._metrics is not None
        # Rendering reads a few hundred series: cheap enough for the loop at a scraper's pace.
        return web.Response(body=self._metrics(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def _healthz(self, _request: web.Request) -> web.Response:
        stats = self.hub.stats
        return web.json_response({"ok": True, "clients": stats["clients"], "streams": len(stats["streams"])})

    async def _readyz(self, _request: web.Request) -> web.Response:
        """200 once the model is loaded and at least one stream is live, else 503 with the reason.
        Without a status source, a stream that has sent the viewer a frame counts as live."""
        model = self._ready() if self._ready is not None else True
        if self._status is not None:
            states = {stream: str(status.get("state")) for stream, status in self._status().items()}
        else:
            states = dict.fromkeys(self.hub.stats["streams"], "live")
        live = sorted(stream for stream, state in states.items() if state == "live")
        reason = None
        if not model:
            reason = "the model is not loaded yet"
        elif not live:
            reason = "no stream is live (" + (", ".join(f"{k}: {v}" for k, v in states.items()) or "none") + ")"
        body = {"ready": reason is None, "model_loaded": model, "live_streams": live, "reason": reason}
        return web.json_response(body, status=200 if reason is None else 503)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if not _origin_allowed(request):
            raise web.HTTPForbidden(text="cross-origin viewer connections are not allowed")
        # compress=False: JPEG does not deflate, and deflating would burn loop CPU per frame.
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, compress=False, max_msg_size=MAX_CLIENT_MSG_BYTES,
                                   writer_limit=WS_WRITER_LIMIT_BYTES)
        await ws.prepare(request)
        bound_send_queue(ws, request.transport)
        await self.hub.serve_client(ws, request.transport)
        return ws


def bound_send_queue(ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None) -> None:
    """Keep what waits to be sent to one viewer to about a frame (see ``WS_NOTSENT_LOWAT_BYTES``)."""
    sock: Any = ws.get_extra_info("socket")
    if isinstance(transport, asyncio.WriteTransport):
        transport.set_write_buffer_limits(high=WS_TRANSPORT_HIGH_BYTES)
    if sock is None:
        return
    lowat = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    try:
        if lowat is not None:
            sock.setsockopt(socket.IPPROTO_TCP, lowat, WS_NOTSENT_LOWAT_BYTES)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WS_SEND_BUFFER_BYTES)
    except OSError as exc:  # not fatal: only latency for slow viewers suffers
        log.debug("viewer: cannot bound the send queue: %s", exc)


@web.middleware
async def _security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    if not response.prepared:  # a WebSocket response has already sent its headers
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-cache")
    return response
