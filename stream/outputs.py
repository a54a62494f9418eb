"""Bringing up the outputs before the model loads: the ZeroMQ publisher and the viewer.

Both bind first, so a taken port or a bad address fails in well under a second. The demo
(which needs no subscriber and no fixed port) falls back to a free port and says which.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from decision_bridge.curve import CurveServer
from decision_bridge.publisher import MaskPublisher, PublisherError
from stream.delivery import DeliveryMode, publisher_for
from web_viewer.app import ViewerError, ViewerServer
from web_viewer.bev_api import BevSource
from web_viewer.hub import ViewerHub
from web_viewer.security import ViewerSecurity
from web_viewer.segmentation import Segmenter

log = logging.getLogger(__name__)
ADDRESS_IN_USE = "in use"  # how both bind errors say it


def bind_publisher(address: str, *, fallback: bool, mode: DeliveryMode = DeliveryMode.PUB,
                   curve: CurveServer | None = None, stream_ids: Iterable[str] | None = None) -> MaskPublisher:
    publisher = publisher_for(address, mode, stream_ids, curve=curve)
    try:
        publisher.bind()
    except PublisherError as exc:
        if not fallback or ADDRESS_IN_USE not in str(exc):
            raise
        publisher.close()
        publisher = publisher_for(address.rsplit(":", 1)[0] + ":0", mode, stream_ids, curve=curve)
        publisher.bind()
        log.warning("%s is in use; publishing on %s instead", address, publisher.bound_address)
    if curve is None and not is_local(publisher.bound_address):
        log.warning("masks are published unencrypted to anyone who can reach %s; use --zmq-curve-key "
                    "(and --zmq-curve-clients), or bind 127.0.0.1", publisher.bound_address)
    elif curve is not None:
        log.info("masks are CURVE-encrypted; %s", f"only the clients in {curve.clients_dir} are admitted"
                 if curve.clients_dir else "any client with the server's public key is admitted")
    log.info("masks: %s  (watch: python -m decision_bridge.subscriber %s)",
             publisher.bound_address, publisher.bound_address)
    return publisher


def is_local(endpoint: str) -> bool:
    """Whether only this host can reach ``endpoint``: ipc://, inproc:// or TCP on a loopback address."""
    transport, _, rest = endpoint.partition("://")
    if transport != "tcp":
        return transport in ("ipc", "inproc")
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, an interface or the wildcard *


async def start_viewer(bind: tuple[str, int], status: Callable[[], dict[str, Any]], *,
                       security: ViewerSecurity | None = None, ready: Callable[[], bool] | None = None,
                       fallback: bool, segmenter: Segmenter | None = None,
                       bev: BevSource | None = None,
                       metrics: Callable[[], bytes] | None = None,
                       telemetry: Callable[[], dict[str, Any]] | None = None) -> tuple[ViewerHub, ViewerServer]:
    """``segmenter``: runs uploaded images through the model (the viewer's POST /api/segment);
    ``metrics``: the Prometheus exposition (``/metrics``); ``telemetry``: per-stream stage latency
    percentiles (``/api/telemetry``, e.g. ``Telemetry.live_summary``)."""
    host, port = bind
    hub = ViewerHub()
    hub.start()
    make = partial(ViewerServer, hub, host, security=security, ready=ready, status=status, segmenter=segmenter, bev=bev,
                   metrics=metrics, telemetry=telemetry)
    viewer = make(port)
    try:
        await viewer.start()
    except ViewerError as exc:
        if not fallback or ADDRESS_IN_USE not in str(exc):
            await hub.close()
            raise
        log.warning("viewer port %d is in use; serving on a free port instead", port)
        viewer = make(0)
        await viewer.start()
    log.info("viewer: %s", viewer.url)
    return hub, viewer
