"""Reference subscriber for ``roadseg.mask``: what a planner team would copy.

It decodes messages with the shared :mod:`decision_bridge.schema` and keeps per-stream
health (openpilot style: alive / rate / valid), so the planner asks one question before
using a mask: ``sub.status(stream_id).valid``.

Run ``python -m decision_bridge.subscriber [ADDR] [--stream S] [--count N]`` to watch a live
``roadseg run``: one line per message.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Self

import numpy as np
import zmq

from decision_bridge.bev import BEV_PREFIX, BevMessage, bev_topic, decode_bev
from decision_bridge.camera_info import CAMERA_PREFIX, CameraInfo, camera_topic, decode_camera_info
from decision_bridge.curve import CurveClient
from decision_bridge.health import NS_PER_S, StreamHealth, StreamStatus
from decision_bridge.liveness import (
    EOS_PREFIX,
    STATUS_PREFIX,
    StreamEvent,
    StreamReport,
    decode_report,
    is_stream_topic,
    stream_topic,
)
from decision_bridge.road import ROAD_PREFIX, RoadMessage, decode_road, road_topic
from decision_bridge.schema import (
    DEFAULT_ADDRESS,
    TOPIC_PREFIX,
    MaskMessage,
    SchemaError,
    decode,
    topic_for,
)

log = logging.getLogger(__name__)

# Rejections are logged for the first few, then sampled, so a broken publisher at 30 Hz
# cannot flood the planner's log.
LOG_FIRST_REJECTIONS = 10
LOG_EVERY_NTH_REJECTION = 100
DEFAULT_RCV_HWM = 1000
DEFAULT_ALIVE_TIMEOUT_S = 0.5  # until a status message announces the publisher's own period
# ZeroMQ transport heartbeats (ZMTP PING/PONG): a connection whose peer stops answering (host gone,
# cable pulled, process frozen) is closed after the timeout and re-dialled, instead of waiting forever.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000


class MaskSubscriber:
    """SUB socket + decoder + per-stream health. Not thread-safe: use from one thread."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        streams: Iterable[str] | None = None,
        *,
        alive_timeout_s: float = DEFAULT_ALIVE_TIMEOUT_S,
        min_rate_hz: float | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        rcv_hwm: int = DEFAULT_RCV_HWM,
        heartbeat: bool = True,
        context: zmq.Context | None = None,
        curve: CurveClient | None = None,
    ) -> None:
        self.address = address
        self.curve = curve  # CURVE: encrypted, authenticated by its key pair (decision_bridge.curve)
        self.streams: frozenset[str] | None = None if streams is None else frozenset(streams)
        self.alive_timeout_ns = int(alive_timeout_s * NS_PER_S)
        self.min_rate_hz = min_rate_hz
        self.received = 0
        self.rejected = 0
        self._clock = clock
        self._rcv_hwm = rcv_hwm
        # Off for a lossless consumer that reads slowly on purpose: while it is not reading, the
        # publisher's pongs queue behind unread messages and the heartbeat would hang up on it.
        self._heartbeat = heartbeat
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._socket: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._state: dict[str, StreamHealth] = {}
        self.reports = 0  # status and end-of-stream messages received
        self._roads: dict[str, RoadMessage] = {}  # the newest drivable space per stream
        self._bevs: dict[str, BevMessage] = {}  # the newest bird's-eye grid per stream
        self._cameras: dict[str, CameraInfo] = {}  # the newest camera file per stream
        self._closed = False

    def connect(self) -> None:
        if self._closed or self._socket is not None:
            state = "closed" if self._closed else "already connected"
            raise RuntimeError(f"subscriber for {self.address} is {state}")
        sock = self._context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self._rcv_hwm)
        if self._heartbeat:
            sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        # Prefix filtering: "mask/cam" also matches "mask/cam2", so recv() re-checks the
        # decoded stream_id exactly. No CONFLATE: it breaks multipart messages.
        for topic in self._topics():
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        if self.curve is not None:
            # A wrong server key, or a client key the publisher does not admit, fails the handshake:
            # nothing is received (libzmq keeps re-dialling), like a publisher that is not there.
            self.curve.apply(sock)
        sock.connect(self.address)
        self._socket = sock
        self._poller.register(sock, zmq.POLLIN)

    def _topics(self) -> list[bytes]:
        """Masks, status and end of stream: of every stream, or of each one asked for."""
        if self.streams is None:
            return [TOPIC_PREFIX, STATUS_PREFIX, EOS_PREFIX, ROAD_PREFIX, BEV_PREFIX, CAMERA_PREFIX]
        return [topic(s) for s in sorted(self.streams)
                for topic in (topic_for, lambda sid: stream_topic(StreamEvent.STATUS, sid),
                              lambda sid: stream_topic(StreamEvent.EOS, sid), road_topic, bev_topic, camera_topic)]

    def close(self) -> None:
        """Close the socket (linger 0). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._socket is not None:
            self._poller.unregister(self._socket)
            self._socket.close(linger=0)
            self._socket = None
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Self:
        if self._socket is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ receiving

    def recv(self, timeout_s: float | None = None) -> MaskMessage | None:
        """Next valid-schema message (oldest first), or None after ``timeout_s`` (None: wait forever).

        Malformed messages are counted in :attr:`rejected`, logged and skipped. A returned
        message may still have ``header.valid == False``: check :meth:`status` / the header.
        """
        sock = self._require_socket()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._poller.poll(remaining_ms):
                return None
            parts = sock.recv_multipart(zmq.NOBLOCK)
            message = self._accept(parts)
            if message is not None:
                return message
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _accept(self, parts: Sequence[bytes]) -> MaskMessage | None:
        """A mask to hand out, or None: a status or end of stream (health updated), a message of
        another stream (prefix match), or a malformed one (counted in ``rejected``, skipped)."""
        try:
            if parts and is_stream_topic(bytes(parts[0])):
                self._on_report(decode_report(parts))
                return None
            if parts and bytes(parts[0]).startswith(ROAD_PREFIX):
                road = decode_road(parts)
                if self.streams is None or road.header.stream_id in self.streams:
                    self._roads[road.header.stream_id] = road
                return None
            if parts and bytes(parts[0]).startswith(BEV_PREFIX):
                bev = decode_bev(parts)
                if self.streams is None or bev.header.stream_id in self.streams:
                    self._bevs[bev.header.stream_id] = bev
                return None
            if parts and bytes(parts[0]).startswith(CAMERA_PREFIX):
                camera = decode_camera_info(parts)
                if self.streams is None or camera.header.stream_id in self.streams:
                    self._cameras[camera.header.stream_id] = camera
                return None
            message = decode(parts)
        except SchemaError as exc:
            self.rejected += 1
            if self.rejected <= LOG_FIRST_REJECTIONS or self.rejected % LOG_EVERY_NTH_REJECTION == 0:
                log.warning("rejected malformed message #%d from %s: %s", self.rejected, self.address, exc)
            return None
        except Exception as exc:
            # Defence in depth: the decoders promise SchemaError for ANY input (fuzz-tested), so
            # this is a decoder bug. One message must still not take down the planner's receive
            # loop: count and skip it like any malformed message, but log it as an error with its
            # traceback. Exception, not BaseException: KeyboardInterrupt/SystemExit still stop
            # the loop. MemoryError is included on purpose: it can only come from this one
            # message's allocations, which are released when it is skipped.
            self.rejected += 1
            if self.rejected <= LOG_FIRST_REJECTIONS or self.rejected % LOG_EVERY_NTH_REJECTION == 0:
                log.error(
                    "rejected message #%d from %s: decoder bug, %s instead of SchemaError: %s",
                    self.rejected,
                    self.address,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
            return None
        stream_id = message.header.stream_id
        if self.streams is not None and stream_id not in self.streams:
            return None  # matched our topic prefix only (e.g. cam2 for cam): not ours
        self.received += 1
        self._state.setdefault(stream_id, StreamHealth()).on_mask(message.header, self._clock())
        return message

    def _on_report(self, report: StreamReport) -> None:
        if self.streams is not None and report.stream_id not in self.streams:
            return
        self.reports += 1
        self._state.setdefault(report.stream_id, StreamHealth()).on_report(report, self._clock())

    # ------------------------------------------------------------------ health

    def stream_ids(self) -> list[str]:
        return sorted(self._state)

    def status(self, stream_id: str) -> StreamStatus:
        """Health of ``stream_id`` now (on this subscriber's clock); see :class:`StreamStatus`."""
        state = self._state.get(stream_id)
        if state is None:
            return StreamStatus(False, 0.0, False, -1, 0, float("inf"))
        return state.status(self._clock(), alive_timeout_ns=self.alive_timeout_ns, min_rate_hz=self.min_rate_hz)

    def road(self, stream_id: str) -> RoadMessage | None:
        """The newest drivable space of ``stream_id`` received (its ``seq`` matches that frame's mask);
        None when the publisher's model or backend has no road layer."""
        return self._roads.get(stream_id)

    def bev(self, stream_id: str) -> BevMessage | None:
        """The newest bird's-eye grid of ``stream_id`` received (SCHEMA.md 15; its ``seq`` matches that frame's
        mask); None for streams without a camera file with a ground plane."""
        return self._bevs.get(stream_id)

    def camera(self, stream_id: str) -> CameraInfo | None:
        """The newest camera file of ``stream_id`` (sent once a second), already checked against its hash:
        the one a mask names when ``mask.header.camera_hash == camera.header.camera_hash``."""
        return self._cameras.get(stream_id)

    def newest(self, timeout_s: float = 0.0) -> dict[str, MaskMessage]:
        """Latest-only use (a control loop): drain everything queued and keep each stream's newest
        mask; health still sees every message. Pair it with a small ``rcv_hwm`` and a publisher in
        ``--zmq-mode latest``, so little that is old is ever queued."""
        return {message.header.stream_id: message for message in self.poll(timeout_s)}

    def poll(self, timeout_s: float = 0.0) -> list[MaskMessage]:
        """Everything queued now (waiting up to ``timeout_s`` for the first message): the masks in
        order; status and end-of-stream messages only update :meth:`status`. Call it often enough
        that health is current; a planner that only wants the newest mask takes the last one."""
        sock = self._require_socket()
        out: list[MaskMessage] = []
        wait_ms: int | None = int(timeout_s * 1000)
        while self._poller.poll(wait_ms):
            message = self._accept(sock.recv_multipart(zmq.NOBLOCK))
            if message is not None:
                out.append(message)
            wait_ms = 0
        return out

    def _require_socket(self) -> zmq.Socket:
        if self._socket is None:
            state = "closed" if self._closed else "not connected (call connect() first)"
            raise RuntimeError(f"subscriber for {self.address} is {state}")
        return self._socket


# ---------------------------------------------------------------------- command line


def describe(message: MaskMessage, status: StreamStatus, now_mono_ns: int) -> str:
    """One human-readable line per message for the CLI."""
    h = message.header
    counts = np.bincount(message.mask.ravel(), minlength=len(h.classes))
    present = ",".join(name for name, n in zip(h.classes, counts, strict=True) if n) or "-"
    # e2e is only meaningful when subscriber and publisher share a host (same monotonic clock).
    e2e_ms = (now_mono_ns - h.capture_mono_ns) / 1e6
    reason = f" ({h.invalid_reason})" if not h.valid and h.invalid_reason else ""
    return (
        f"{h.stream_id} seq={h.seq} {h.width}x{h.height} latency={h.latency_ms:.1f}ms e2e={e2e_ms:.1f}ms "
        f"valid={h.valid}{reason} rate={status.rate_hz:.1f}Hz gaps={status.gaps} classes={present}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m decision_bridge.subscriber", description="Print roadseg.mask messages."
    )
    parser.add_argument("address", nargs="?", default=DEFAULT_ADDRESS, help=f"default {DEFAULT_ADDRESS}")
    parser.add_argument("--stream", action="append", help="only this stream id (repeatable)")
    parser.add_argument("--count", type=int, default=0, help="exit after N messages (0: run forever)")
    parser.add_argument("--timeout", type=float, default=None, help="exit 1 if no message for this many s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    seen = 0
    with MaskSubscriber(args.address, args.stream) as sub:
        try:
            while not args.count or seen < args.count:
                message = sub.recv(args.timeout)
                if message is None:
                    print(f"no message for {args.timeout}s from {args.address}", file=sys.stderr)
                    return 1
                seen += 1
                status = sub.status(message.header.stream_id)
                print(describe(message, status, time.monotonic_ns()), flush=True)
        except KeyboardInterrupt:
            pass
    print(f"received={seen} rejected={sub.rejected}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
