"""Live cameras (RTSP, V4L2): a reader thread per connection, a frame-age watchdog,
and reconnects with capped exponential backoff.

Why a watchdog on frame *age* rather than on errors: OpenCV's RTSP ``read()`` blocks
~30 s on a hung server and then returns the last frame again and again, so neither
an error nor a timeout ever arrives in time. The watchdog only trusts frames that
are new (their timestamp or pixels changed); when none came for ``stall_ms`` the
connection is abandoned (its thread exits whenever its blocked read returns) and a
fresh one is opened. Each connection has a generation number; anything an
abandoned reader still reports is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from stream.clock import MONOTONIC, Clock
from stream.frame import Frame
from stream.health import StreamState
from stream.sources.base import (
    EndOfStream,
    FrameDecodeError,
    FrameSource,
    RawFrame,
    SourceError,
    apply_limits,
    media_ns,
)
from stream.sources.limits import FrameLimits

log = logging.getLogger(__name__)

DROP_CAUSE_SUPERSEDED = "superseded"  # a newer frame arrived before the pipeline took this one
DROP_CAUSE_SHUTDOWN = "shutdown"  # captured, then the stream was closed before it was taken
# After each (re)connect FFmpeg hands out the ~1 s of frames it buffered while probing the
# stream, in a burst; stamped on arrival they would look fresh (measured: first mask 1.2 s
# old by the camera's clock, flagged valid). Frames read faster than half a frame period
# right after opening are that backlog: skipped and counted. (FFmpeg's nobuffer flag also
# avoids it but then waits for the next keyframe: recovery 1.9 -> 3.0 s.)
DROP_CAUSE_BACKLOG = "backlog"
BACKLOG_READ_SHARE = 0.5  # of a frame period
MAX_BACKLOG_FRAMES = 120  # never flush forever: a camera that always answers at once is just fast
DEFAULT_PERIOD_S = 1 / 30
STALL_PERIODS = 3  # a slow camera is stalled only after this many missed frame periods
REPEAT_BACKOFF_S = 0.005  # a capture that keeps returning the same frame is polled this gently
READER_JOIN_S = 0.5  # close() waits this long for readers not stuck in a blocking read
FAILURE_LOG_EVERY = 10  # after the first failed (re)open, log one in this many


class Capture(Protocol):
    """What a reader needs of ``cv2.VideoCapture`` (and what tests substitute)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def get(self, prop: int) -> float: ...

    def release(self) -> None: ...


Opener = Callable[[], Capture]  # blocking; raises SourceError when the camera cannot be opened


@dataclass(frozen=True)
class LiveOptions:
    stall_ms: float = 1000.0  # no new frame for this long: stalled, reconnect
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 1.0  # capped so a restarted camera is back within ~3 s
    watchdog_period_s: float = 0.1
    max_abandoned_readers: int = 4  # threads still blocked in an abandoned read; more wait

    def __post_init__(self) -> None:
        if self.stall_ms <= 0 or self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(f"bad live options: {self}")


class Backoff:
    """Exponential delays with 'equal jitter' (half fixed, half random), capped, so many
    cameras behind one dead switch do not reconnect in lock-step."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self._initial, self._max = initial_s, max_s
        self._rng = rng or random.Random()
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self._max, self._initial * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return ceiling * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._attempt = 0


def _frame_key(capture: Capture, bgr: np.ndarray) -> tuple[float, bytes]:
    """What makes a frame new: its media timestamp when the capture has one, else a
    sparse pixel sample (a stale decoder returns the identical buffer)."""
    pts = capture.get(cv2.CAP_PROP_POS_MSEC)
    return (pts, b"") if pts and pts > 0 else (0.0, bgr[::17, ::13].tobytes())


class LiveCaptureSource(FrameSource):
    """A camera: frames arrive on their own; ``recv()`` hands out the newest."""

    live = True

    def __init__(self, source_id: str, spec: str, opener: Opener, *, options: LiveOptions | None = None,
                 limits: FrameLimits | None = None, max_frames: int | None = None, clock: Clock = MONOTONIC,
                 rng: random.Random | None = None) -> None:
        super().__init__(source_id, spec)
        self._opener = opener
        self._options = options = options or LiveOptions()
        self._limits = limits
        self._max_frames = max_frames
        self._clock = clock
        self._backoff = Backoff(options.backoff_initial_s, options.backoff_max_s, rng)
        self._generation = 0
        self._seq = 0
        self._fps: float | None = None
        self._mailbox: Frame | None = None
        self._ready = asyncio.Event()
        self._readers: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._reopen: asyncio.TimerHandle | None = None
        self._watch_since_ns = 0
        self._ever_opened = False
        self._failures = 0
        self._closed = False

    @property
    def nominal_fps(self) -> float | None:
        return self._fps

    @property
    def frames_read(self) -> int:
        return self._seq

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._loop is not None or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        self._connect()
        self._watchdog = asyncio.create_task(self._watch(), name=f"watchdog-{self.source_id}")

    async def recv(self) -> Frame:
        while True:
            if self._mailbox is not None:
                frame, self._mailbox = self._mailbox, None
                return frame
            if self._closed or self._done():
                raise EndOfStream(self.source_id)
            self._ready.clear()
            await self._ready.wait()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._generation += 1  # every reader is now abandoned
        if self._mailbox is not None:  # captured, never taken: counted, not lost silently
            self.drops[DROP_CAUSE_SHUTDOWN] += 1
            self._mailbox = None
        if self.state is not StreamState.FAILED:
            self.state = StreamState.ENDED
        if self._reopen is not None:
            self._reopen.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        self._ready.set()
        for reader in self._readers:
            # Readers are daemon threads: one stuck in a hung read must not hold up shutdown.
            await asyncio.to_thread(reader.join, READER_JOIN_S)

    def _done(self) -> bool:
        return self._max_frames is not None and self._seq >= self._max_frames

    # ------------------------------------------------------------------ connections (loop side)

    def _connect(self) -> None:
        self._reopen = None
        if self._closed:
            return
        self._readers = [t for t in self._readers if t.is_alive()]
        if len(self._readers) > self._options.max_abandoned_readers:
            self._schedule_reopen(self.state)  # wait for hung reads to time out first
            return
        self._generation += 1
        self._watch_since_ns = self._clock.now_ns()
        reader = threading.Thread(target=self._read_loop, args=(self._generation,), daemon=True,
                                  name=f"live-{self.source_id}-{self._generation}")
        self._readers.append(reader)
        reader.start()

    def _schedule_reopen(self, state: StreamState) -> None:
        if self._closed or self._reopen is not None or self._loop is None:
            return
        self.state = state
        self._generation += 1  # abandon the current connection, if any
        self._reopen = self._loop.call_later(self._backoff.next_delay(), self._connect)

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._options.watchdog_period_s)
            if self.state is not StreamState.LIVE or self._reopen is not None:
                continue
            since = max(self._last_frame_ns or 0, self._watch_since_ns)
            age_ms = (self._clock.now_ns() - since) / 1e6
            if age_ms > self._stall_ms():
                log.warning("stream %s: no new frame for %.0f ms; stalled, reconnecting", self.source_id, age_ms)
                self._schedule_reopen(StreamState.STALLED)

    def _stall_ms(self) -> float:
        periods_ms = STALL_PERIODS * 1000.0 / self._fps if self._fps else 0.0
        return max(self._options.stall_ms, periods_ms)

    def _on_event(self, generation: int, kind: str, payload: Any) -> None:
        if generation != self._generation or self._closed:
            return  # an abandoned reader's late news
        if kind == "frame":
            self._on_frame(*payload)
        elif kind == "opened":
            self._on_opened(payload)
        elif kind == "dropped":
            self._seq += 1
            self.drops[payload] += 1
        elif kind == "failed":
            self._on_failure(payload)

    def _on_opened(self, fps: float | None) -> None:
        if fps:
            self._fps = fps
        if self._ever_opened:
            self.reconnects += 1
            log.info("stream %s: reconnected (%d reconnects)", self.source_id, self.reconnects)
        else:
            log.info("stream %s: connected", self.source_id)
        self._ever_opened = True
        self._failures = 0
        self._backoff.reset()
        self.state = StreamState.LIVE
        self._watch_since_ns = self._clock.now_ns()

    def _on_failure(self, reason: str) -> None:
        self._failures += 1
        if self._failures % FAILURE_LOG_EVERY == 1:
            log.warning("stream %s: %s (attempt %d); retrying", self.source_id, reason, self._failures)
        state = StreamState.RECONNECTING if self._ever_opened else StreamState.CONNECTING
        if self.state is StreamState.STALLED:
            state = StreamState.STALLED  # still no frames since the stall: say so
        self._schedule_reopen(state)

    def _on_frame(self, raw: RawFrame, capture_ns: int) -> None:
        if self._done():
            return
        if self._mailbox is not None:
            self.drops[DROP_CAUSE_SUPERSEDED] += 1
        wall_ns = self._clock.wall_ns() - (self._clock.now_ns() - capture_ns)
        self._mailbox = Frame(self.source_id, self._seq, capture_ns, wall_ns, raw.image, raw.truth, raw.name,
                              media_ns(raw.media_time_s))
        self._seq += 1
        self._last_frame_ns = capture_ns
        self.state = StreamState.LIVE
        self._ready.set()

    # ------------------------------------------------------------------ reader thread

    def _post(self, generation: int, kind: str, payload: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed under an abandoned reader
            loop.call_soon_threadsafe(self._on_event, generation, kind, payload)

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._closed

    def _read_loop(self, generation: int) -> None:
        """Blocking: open, then read until the connection fails or is abandoned."""
        try:
            capture = self._opener()
        except Exception as exc:  # any failure to open is retried; the message names the camera
            self._post(generation, "failed", str(exc))
            return
        try:
            reported = capture.get(cv2.CAP_PROP_FPS)
            fps = reported if reported and 0 < reported < 1000 else None
            self._post(generation, "opened", fps)
            self._read_frames(generation, capture, BACKLOG_READ_SHARE * (1 / fps if fps else DEFAULT_PERIOD_S))
        finally:
            capture.release()

    def _read_frames(self, generation: int, capture: Capture, backlog_read_s: float) -> None:
        last_key: tuple[float, bytes] | None = None
        index = 0
        backlog = 0  # frames flushed since opening; -1 once a read had to wait (fresh frames)
        while self._current(generation):
            started_ns = time.monotonic_ns()
            ok, bgr = capture.read()
            capture_ns = self._clock.now_ns()
            if not self._current(generation):
                return
            if not ok or bgr is None:
                self._post(generation, "failed", "connection lost or stream ended")
                return
            if backlog >= 0:
                if (time.monotonic_ns() - started_ns) / 1e9 < backlog_read_s and backlog < MAX_BACKLOG_FRAMES:
                    backlog += 1
                    self._post(generation, "dropped", DROP_CAUSE_BACKLOG)
                    continue
                backlog = -1
            key = _frame_key(capture, bgr)
            media_s = key[0] / 1e3 if key[0] > 0 else None  # the stream's presentation time, where it has one
            if key == last_key:
                time.sleep(REPEAT_BACKOFF_S)  # the same frame again: not news
                continue
            last_key = key
            try:
                raw = apply_limits(RawFrame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None, f"#{index}", media_s),
                                   self._limits)
            except FrameDecodeError as exc:
                self._post(generation, "dropped", exc.cause)
                continue
            finally:
                index += 1
            self._post(generation, "frame", (raw, capture_ns))


__all__ = ["Backoff", "Capture", "LiveCaptureSource", "LiveOptions", "Opener", "SourceError"]
