"""Source contract: ``await recv()`` returns the next :class:`Frame` or raises
:class:`EndOfStream`; blocking decode runs in the source's own thread.

Sequence numbers count frames *captured*: a frame lost at the source (undecodable,
too large, skipped to keep a paced replay on time) still takes its number, so every
loss downstream shows up as a gap at the right place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import Counter
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from models.errors import DatasetError, UnreadableImage
from stream.clock import MONOTONIC, Clock
from stream.frame import Frame
from stream.health import StreamHealth, StreamState, frame_age_ms
from stream.sources.limits import DROP_CAUSE_OVERSIZE, FrameLimits, FrameTooLarge

log = logging.getLogger(__name__)
DEFAULT_FPS = 30.0  # pacing rate of a recording that states none
DROP_CAUSE_DECODE = "decode_error"
DROP_CAUSE_LATE = "late"  # a paced replay in live mode skipped a frame it could not show on time
# A paced replay this far behind its recorded clock is told to the user (once per stream).
LAG_WARNING_NS = 1_000_000_000


class ReplayMode(StrEnum):
    """What a paced replay does when the machine cannot keep up with its rate."""

    LOSSLESS = "lossless"  # every frame, late: the replay falls behind the recording's clock
    LIVE = "live"  # the newest frame, on time: late frames are skipped and counted, like a camera


class SourceError(DatasetError):
    """A source cannot be opened or read; the message names the input."""


class EndOfStream(Exception):
    """The source has no more frames."""


# One frame could not be decoded or was refused: the source skips it and counts its cause.
FrameDecodeError = UnreadableImage


@dataclass(frozen=True, slots=True)
class RawFrame:
    """What a reader thread produces before the source stamps it into a Frame."""

    image: np.ndarray
    truth: np.ndarray | None
    name: str
    media_time_s: float | None = None  # position in the recording, for --realtime pacing


def media_ns(media_time_s: float | None) -> int | None:
    return None if media_time_s is None else round(media_time_s * 1e9)


def apply_limits(raw: RawFrame, limits: FrameLimits | None) -> RawFrame:
    """Blocking (reader thread): the frame within ``limits``, or FrameDecodeError(cause=oversize)."""
    if limits is None:
        return raw
    try:
        image, truth = limits.fit(raw.name, raw.image, raw.truth)
    except FrameTooLarge as exc:
        raise FrameDecodeError(raw.name, str(exc), DROP_CAUSE_OVERSIZE) from None
    if image is raw.image:
        return raw
    return RawFrame(image, truth, raw.name, raw.media_time_s)


class FrameSource(ABC):
    """Base for every source. ``live`` sources keep the newest frame downstream;
    replay sources are lossless."""

    live: bool = False

    def __init__(self, source_id: str, spec: str) -> None:
        self.source_id = source_id
        self.spec = spec  # display form: credentials are never kept here
        self.drops: Counter[str] = Counter()  # cause -> frames this source lost before handing out
        self.state = StreamState.CONNECTING
        self.reconnects = 0
        self.max_lag_ms = 0.0  # how far a paced replay fell behind its recorded clock
        self._last_frame_ns: int | None = None

    @property
    def nominal_fps(self) -> float | None:
        """The recorded or configured frame rate, when known."""
        return None

    @property
    @abstractmethod
    def frames_read(self) -> int:
        """Frames captured so far: handed out by recv() plus those lost at the source."""

    def health(self, now_ns: int) -> StreamHealth:
        return StreamHealth(self.state, self.live, self.reconnects, frame_age_ms(self._last_frame_ns, now_ns))

    async def start(self) -> None:
        """Begin capturing (live sources); replay sources read only when pulled."""
        return None

    @abstractmethod
    async def recv(self) -> Frame: ...

    @abstractmethod
    async def close(self) -> None: ...


class ThreadedReplaySource(FrameSource):
    """A recorded source: each ``recv()`` decodes one frame on a worker thread.

    The thread comes from ``executor`` (the pipeline's decode pool, sized to the
    machine and shared by all sources) or from a private one-thread pool. One read
    is in flight per source at a time, so readers need no locks and frames stay in
    order. Reading only when pulled gives replay its back-pressure for free; with
    ``realtime`` frames are released at the recorded rate instead of as fast as
    possible; ``rate`` releases them at that many frames per second instead (a
    camera simulated at a chosen load, e.g. for latency benchmarks). A paced frame's
    capture time is when the recording says it was taken, so a replay that falls
    behind shows its lag as latency instead of hiding it.
    """

    def __init__(
        self,
        source_id: str,
        spec: str,
        *,
        realtime: bool = False,
        rate: float | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        clock: Clock = MONOTONIC,
        executor: Executor | None = None,
        replay_mode: ReplayMode = ReplayMode.LOSSLESS,
        limits: FrameLimits | None = None,
    ) -> None:
        super().__init__(source_id, spec)
        if rate is not None and rate <= 0:
            raise SourceError(f"source {spec!r}: replay rate must be > 0 frames/s, got {rate}")
        self._realtime = realtime or rate is not None
        self._rate = rate
        self._fps = fps
        self._max_frames = max_frames
        self._clock = clock
        self._limits = limits
        # Live mode only means something when paced: unpaced replay has no clock to be late for.
        self.live = self._realtime and replay_mode is ReplayMode.LIVE
        self._seq = 0
        self._start_ns: int | None = None
        self._lag_warned = False
        self._closed = False
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"src-{source_id}")
        self._in_flight: Future[RawFrame | None] | None = None

    @property
    def nominal_fps(self) -> float | None:
        return self._rate or self._fps

    @property
    def frames_read(self) -> int:
        return self._seq

    async def open(self) -> None:
        """Validate and open the input off the loop; raises SourceError naming it."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        except OSError as exc:
            raise SourceError(f"source {self.spec!r}: {exc}") from exc
        self.state = StreamState.LIVE

    def _open(self) -> None:
        pass

    @abstractmethod
    def _read(self) -> RawFrame | None:
        """Blocking: decode the next frame, None at the end, FrameDecodeError to skip one."""

    def _skip(self, count: int) -> int:
        """Blocking: advance past ``count`` frames without delivering them; returns how many
        were skipped (fewer at the end). Subclasses override with something cheaper."""
        for skipped in range(count):
            try:
                if self._read() is None:
                    return skipped
            except FrameDecodeError:
                pass
        return count

    def _close(self) -> None:
        pass

    def _missing_at_end(self) -> int:
        """Frames the recording promised but did not deliver (already counted in ``drops``)."""
        return 0

    def _read_limited(self) -> RawFrame | None:
        raw = self._read()
        return None if raw is None else apply_limits(raw, self._limits)

    def _exhausted(self) -> bool:
        return self._closed or (self._max_frames is not None and self._seq >= self._max_frames)

    async def recv(self) -> Frame:
        if self.live:
            await self._skip_late()
        while True:
            if self._exhausted():
                self.state = StreamState.ENDED
                raise EndOfStream(self.source_id)
            try:
                self._in_flight = self._executor.submit(self._read_limited)
                raw = await asyncio.wrap_future(self._in_flight)
            except FrameDecodeError as exc:
                self.drops[exc.cause] += 1
                self._seq += 1  # the lost frame keeps its number: a gap downstream
                log.error("source %s: skipping frame %s (%s)", self.source_id, exc, exc.cause)
                continue
            break
        if raw is None:
            self._seq += self._missing_at_end()  # promised frames that never came: counted, so numbered
            self.state = StreamState.ENDED
            raise EndOfStream(self.source_id)
        capture_ns = await self._pace(raw)
        frame = Frame(
            source_id=self.source_id,
            seq=self._seq,
            capture_ns=capture_ns,
            capture_wall_ns=self._clock.wall_ns() - (self._clock.now_ns() - capture_ns),
            image=raw.image,
            truth=raw.truth,
            name=raw.name,
            media_ns=media_ns(raw.media_time_s),
        )
        self._seq += 1
        self._last_frame_ns = self._clock.now_ns()
        return frame

    def _period_ns(self) -> int:
        return int(1e9 / (self._rate or self._fps or DEFAULT_FPS))

    async def _skip_late(self) -> None:
        """Live replay: jump over the frames whose time has already passed, counted as late."""
        if self._start_ns is None or self._exhausted():
            return
        behind_ns = self._clock.now_ns() - (self._start_ns + self._seq * self._period_ns())
        count = behind_ns // self._period_ns()
        if self._max_frames is not None:
            count = min(count, self._max_frames - self._seq)
        if count <= 0:
            return
        skip = self._executor.submit(self._skip, int(count))
        self._in_flight = skip  # type: ignore[assignment]  # close() waits for it like a read
        skipped = await asyncio.wrap_future(skip)
        self._seq += skipped
        self.drops[DROP_CAUSE_LATE] += skipped

    async def _pace(self, raw: RawFrame) -> int:
        """Wait for the frame's moment when paced; returns its capture time."""
        now_ns = self._clock.now_ns()
        if not self._realtime:
            return now_ns
        if self._start_ns is None:
            self._start_ns = now_ns
        if self._rate is not None or raw.media_time_s is None:
            media_s = self._seq / (self._rate or self._fps or DEFAULT_FPS)
        else:
            media_s = raw.media_time_s
        due_ns = self._start_ns + int(media_s * 1e9)
        if now_ns < due_ns:
            await self._clock.sleep_until(due_ns)
            return due_ns
        self._note_lag(now_ns - due_ns)
        return due_ns

    def _note_lag(self, lag_ns: int) -> None:
        self.max_lag_ms = max(self.max_lag_ms, lag_ns / 1e6)
        if lag_ns > LAG_WARNING_NS and not self._lag_warned and not self.live:
            self._lag_warned = True
            log.warning("stream %s: replay is %.1f s behind its recorded rate; lossless mode keeps every "
                        "frame, late (--replay-mode live keeps it on time by skipping late frames)",
                        self.source_id, lag_ns / 1e9)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.state not in (StreamState.ENDED, StreamState.FAILED):
            self.state = StreamState.ENDED
        # A read cancelled by stop() keeps running on its thread: let it finish
        # before the decoder it uses is released.
        if self._in_flight is not None and not self._in_flight.done():
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._in_flight)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        if self._own_executor:
            self._executor.shutdown(wait=True)
