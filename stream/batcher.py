"""Dynamic batching across streams that never waits for the slowest camera.

A batch closes as soon as any of these holds: it has ``max_batch`` frames, every
stream that is still open has contributed a frame, or ``max_wait_ms`` has passed
since its first frame. Streams are visited round-robin so a fast camera cannot
starve a slow one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from stream.clock import MONOTONIC, Clock
from stream.frame import Frame
from stream.queues import BoundedQueue

NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = 8
    max_wait_ms: float = 4.0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")


class AllStreamsEnded(Exception):
    """Every input queue is closed and drained."""


class Batcher:
    def __init__(
        self,
        queues: Sequence[BoundedQueue[Frame]],
        notify: asyncio.Event,
        config: BatchConfig,
        clock: Clock = MONOTONIC,
    ) -> None:
        self._queues = list(queues)
        self._notify = notify  # set by every queue on put and on close
        self._config = config
        self._clock = clock
        self._next = 0  # round-robin start

    def _take(self, batch: list[Frame], represented: set[int]) -> None:
        """Move ready frames into the batch, one per stream per pass, round-robin."""
        progress = True
        while progress and len(batch) < self._config.max_batch:
            progress = False
            for step in range(len(self._queues)):
                index = (self._next + step) % len(self._queues)
                frame = self._queues[index].get_nowait()
                if frame is None:
                    continue
                batch.append(frame)
                represented.add(index)
                progress = True
                if len(batch) >= self._config.max_batch:
                    break
        self._next = (self._next + 1) % len(self._queues)

    def _all_drained(self) -> bool:
        return all(q.closed and len(q) == 0 for q in self._queues)

    def _every_open_stream_in(self, represented: set[int]) -> bool:
        return all(i in represented or q.closed for i, q in enumerate(self._queues))

    async def next_batch(self) -> list[Frame]:
        batch: list[Frame] = []
        represented: set[int] = set()
        while not batch:
            self._notify.clear()
            self._take(batch, represented)
            if batch:
                break
            if self._all_drained():
                raise AllStreamsEnded
            await self._notify.wait()
        deadline_ns = self._clock.now_ns() + int(self._config.max_wait_ms * NS_PER_MS)
        while len(batch) < self._config.max_batch and not self._every_open_stream_in(represented):
            remaining_s = (deadline_ns - self._clock.now_ns()) / 1e9
            if remaining_s <= 0:
                break
            self._notify.clear()
            self._take(batch, represented)
            if len(batch) >= self._config.max_batch or self._every_open_stream_in(represented):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._notify.wait(), remaining_s)
        return batch
