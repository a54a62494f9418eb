"""Source contract: ``await recv()`` returns the next :class:`Frame` or raises
:class:`EndOfStream`; blocking decode runs in the source's own thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import Counter
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from stream.clock import MONOTONIC, Clock
from stream.frame import Frame

log = logging.getLogger(__name__)
DEFAULT_FPS = 30.0  # pacing rate of a recording that states none


class SourceError(Exception):
    """A source cannot be opened or read; the message names the input."""


class EndOfStream(Exception):
    """The source has no more frames."""


class FrameDecodeError(Exception):
    """One frame could not be decoded; the source skips it and counts the drop."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RawFrame:
    """What a reader thread produces before the source stamps it into a Frame."""

    image: np.ndarray
    truth: np.ndarray | None
    name: str
    media_time_s: float | None = None  # position in the recording, for --realtime pacing


class FrameSource(ABC):
    """Base for every source. ``live`` sources keep the newest frame downstream;
    replay sources are lossless."""

    live: bool = False

    def __init__(self, source_id: str, spec: str) -> None:
        self.source_id = source_id
        self.spec = spec
        self.drops: Counter[str] = Counter()  # cause -> frames this source skipped

    @property
    def nominal_fps(self) -> float | None:
        """The recorded or configured frame rate, when known."""
        return None

    @property
    @abstractmethod
    def frames_read(self) -> int:
        """Frames handed out by recv() so far (decode-error skips not included)."""

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
    camera simulated at a chosen load, e.g. for latency benchmarks).
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
    ) -> None:
        super().__init__(source_id, spec)
        if rate is not None and rate <= 0:
            raise SourceError(f"source {spec!r}: replay rate must be > 0 frames/s, got {rate}")
        self._realtime = realtime or rate is not None
        self._rate = rate
        self._fps = fps
        self._max_frames = max_frames
        self._clock = clock
        self._seq = 0
        self._start_ns: int | None = None
        self._closed = False
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"src-{source_id}")
        self._in_flight: Future[RawFrame | None] | None = None

    @property
    def nominal_fps(self) -> float | None:
        return self._fps

    @property
    def frames_read(self) -> int:
        return self._seq

    async def open(self) -> None:
        """Validate and open the input off the loop; raises SourceError naming it."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        except OSError as exc:
            raise SourceError(f"source {self.spec!r}: {exc}") from exc

    def _open(self) -> None:
        pass

    @abstractmethod
    def _read(self) -> RawFrame | None:
        """Blocking: decode the next frame, None at the end, FrameDecodeError to skip one."""

    def _close(self) -> None:
        pass

    async def recv(self) -> Frame:
        if self._closed or (self._max_frames is not None and self._seq >= self._max_frames):
            raise EndOfStream(self.source_id)
        while True:
            try:
                self._in_flight = self._executor.submit(self._read)
                raw = await asyncio.wrap_future(self._in_flight)
            except FrameDecodeError as exc:
                self.drops["decode_error"] += 1
                log.error("source %s: skipping unreadable frame %s", self.source_id, exc)
                continue
            break
        if raw is None:
            raise EndOfStream(self.source_id)
        await self._pace(raw)
        frame = Frame(
            source_id=self.source_id,
            seq=self._seq,
            capture_ns=self._clock.now_ns(),
            capture_wall_ns=self._clock.wall_ns(),
            image=raw.image,
            truth=raw.truth,
            name=raw.name,
        )
        self._seq += 1
        return frame

    async def _pace(self, raw: RawFrame) -> None:
        if not self._realtime:
            return
        if self._start_ns is None:
            self._start_ns = self._clock.now_ns()
        if self._rate is not None:
            media_s = self._seq / self._rate
        elif raw.media_time_s is not None:
            media_s = raw.media_time_s
        else:
            media_s = self._seq / (self._fps or DEFAULT_FPS)
        await self._clock.sleep_until(self._start_ns + int(media_s * 1e9))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A read cancelled by stop() keeps running on its thread: let it finish
        # before the decoder it uses is released.
        if self._in_flight is not None and not self._in_flight.done():
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self._in_flight)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        if self._own_executor:
            self._executor.shutdown(wait=True)
