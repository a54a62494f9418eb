"""Exact per-stream frame accounting: every frame a source captured is published or
counted as dropped with its cause, and the sequence gap before each published frame
says how many of its stream's frames were lost just before it."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from stream.frame import Frame


class Ledger:
    """Loop-thread only. Drops the pipeline itself decides (stale, inference error, shutdown)
    live here; sources and queues keep their own counters, merged by :meth:`drops_of`."""

    def __init__(self) -> None:
        self._drops: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.in_flight: Counter[str] = Counter()  # taken from a queue, not yet published or dropped
        self._last_seq: dict[str, int] = {}

    def drop(self, stream_id: str, cause: str, count: int = 1) -> None:
        self._drops[stream_id][cause] += count

    def enter(self, frames: Iterable[Frame]) -> None:
        for frame in frames:
            self.in_flight[frame.source_id] += 1

    def fail(self, frame: Frame, cause: str) -> None:
        """A frame in flight that will not be published."""
        self.in_flight[frame.source_id] -= 1
        self.drop(frame.source_id, cause)

    def published(self, stream_id: str) -> None:
        self.in_flight[stream_id] -= 1

    def gap_before(self, stream_id: str, seq: int) -> int:
        """Frames of the stream lost since its previous published frame (seq counts captures)."""
        gap = seq - self._last_seq.get(stream_id, -1) - 1
        self._last_seq[stream_id] = seq
        return max(gap, 0)

    def drops_of(self, source: Any, queue: Any) -> Counter[str]:
        total: Counter[str] = Counter(source.drops)
        if queue is not None:
            total.update(queue.drops)
        total.update(self._drops.get(source.source_id, Counter()))
        return +total  # drop zero entries
