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
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Self

import numpy as np
import zmq

from decision_bridge.schema import (
    DEFAULT_ADDRESS,
    TOPIC_PREFIX,
    MaskHeader,
    MaskMessage,
    SchemaError,
    decode,
    topic_for,
)

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
# Rate is measured over this many most recent arrivals: ~1 s at 30 Hz, long enough to be
# stable and short enough to react to a slowing publisher within a second.
RATE_WINDOW_MESSAGES = 30
# Rejections are logged for the first few, then sampled, so a broken publisher at 30 Hz
# cannot flood the planner's log.
LOG_FIRST_REJECTIONS = 10
LOG_EVERY_NTH_REJECTION = 100
DEFAULT_RCV_HWM = 1000


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """Health of one stream as seen by this subscriber, at the time of the call."""

    alive: bool  # a message arrived within alive_timeout_s
    rate_hz: float  # over the last RATE_WINDOW_MESSAGES arrivals (0.0 with fewer than 2)
    valid: bool  # alive AND last header valid AND (rate >= min_rate_hz, when set)
    last_seq: int  # -1 if nothing received yet
    gaps: int  # seq jumps seen (each jump = one or more frames this subscriber never saw)
    age_ms: float  # since the last message arrived here (inf if none)
    missed: int = 0  # frames never seen: the sum of all jump sizes
    dropped_upstream: int = 0  # of those, declared dropped by the publisher (dropped_before)


@dataclass(slots=True)
class _StreamState:
    last_seq: int = -1
    last_rx_ns: int = 0
    last_valid: bool = False
    gaps: int = 0
    missed: int = 0
    dropped_upstream: int = 0
    arrivals: deque[int] = field(default_factory=lambda: deque(maxlen=RATE_WINDOW_MESSAGES))

    def update(self, header: MaskHeader, now_ns: int) -> None:
        if self.last_seq >= 0:
            jump = header.seq - self.last_seq - 1
            if jump > 0:
                self.gaps += 1
                self.missed += jump
                self.dropped_upstream += min(header.dropped_before, jump)
            elif jump < 0:
                # seq went backwards: the publisher restarted. Not a loss; start over.
                log.info("stream %s restarted (seq %d after %d)", header.stream_id, header.seq, self.last_seq)
                self.arrivals.clear()
        self.last_seq = header.seq
        self.last_rx_ns = now_ns
        self.last_valid = header.valid
        self.arrivals.append(now_ns)

    def rate_hz(self) -> float:
        if len(self.arrivals) < 2:
            return 0.0
        span_ns = self.arrivals[-1] - self.arrivals[0]
        return (len(self.arrivals) - 1) * NS_PER_S / span_ns if span_ns > 0 else 0.0


class MaskSubscriber:
    """SUB socket + decoder + per-stream health. Not thread-safe: use from one thread."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        streams: Iterable[str] | None = None,
        *,
        alive_timeout_s: float = 0.5,
        min_rate_hz: float | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        rcv_hwm: int = DEFAULT_RCV_HWM,
        context: zmq.Context | None = None,
    ) -> None:
        self.address = address
        self.streams: frozenset[str] | None = None if streams is None else frozenset(streams)
        self.alive_timeout_ns = int(alive_timeout_s * NS_PER_S)
        self.min_rate_hz = min_rate_hz
        self.received = 0
        self.rejected = 0
        self._clock = clock
        self._rcv_hwm = rcv_hwm
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._socket: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._state: dict[str, _StreamState] = {}
        self._closed = False

    def connect(self) -> None:
        if self._closed or self._socket is not None:
            state = "closed" if self._closed else "already connected"
            raise RuntimeError(f"subscriber for {self.address} is {state}")
        sock = self._context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self._rcv_hwm)
        # Prefix filtering: "mask/cam" also matches "mask/cam2", so recv() re-checks the
        # decoded stream_id exactly. No CONFLATE: it breaks multipart messages.
        topics = [TOPIC_PREFIX] if self.streams is None else [topic_for(s) for s in sorted(self.streams)]
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(self.address)
        self._socket = sock
        self._poller.register(sock, zmq.POLLIN)

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
        try:
            message = decode(parts)
        except SchemaError as exc:
            self.rejected += 1
            if self.rejected <= LOG_FIRST_REJECTIONS or self.rejected % LOG_EVERY_NTH_REJECTION == 0:
                log.warning(
                    "rejected malformed mask message #%d from %s: %s", self.rejected, self.address, exc
                )
            return None
        stream_id = message.header.stream_id
        if self.streams is not None and stream_id not in self.streams:
            return None  # matched our topic prefix only (e.g. cam2 for cam): not ours
        self.received += 1
        self._state.setdefault(stream_id, _StreamState()).update(message.header, self._clock())
        return message

    # ------------------------------------------------------------------ health

    def stream_ids(self) -> list[str]:
        return sorted(self._state)

    def status(self, stream_id: str) -> StreamStatus:
        state = self._state.get(stream_id)
        if state is None:
            return StreamStatus(False, 0.0, False, -1, 0, float("inf"))
        age_ns = self._clock() - state.last_rx_ns
        alive = age_ns <= self.alive_timeout_ns
        rate = state.rate_hz()
        rate_ok = self.min_rate_hz is None or rate >= self.min_rate_hz
        return StreamStatus(
            alive=alive,
            rate_hz=rate,
            valid=alive and state.last_valid and rate_ok,
            last_seq=state.last_seq,
            gaps=state.gaps,
            age_ms=age_ns / 1e6,
            missed=state.missed,
            dropped_upstream=state.dropped_upstream,
        )

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
