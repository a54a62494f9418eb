"""Bounded queues with a named, counted drop policy.

Replay must be lossless, so producers wait (``BLOCK``); a live camera must never
let latency creep, so the oldest queued item is evicted (``DROP_OLDEST``) and
the newest always gets in. Every eviction is counted by cause.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from enum import StrEnum
from typing import Generic, TypeVar

T = TypeVar("T")

DROP_CAUSE_QUEUE_FULL = "queue_full"


class DropPolicy(StrEnum):
    BLOCK = "block"  # lossless: put() waits for room (replay)
    DROP_OLDEST = "drop_oldest"  # live: evict the oldest item, keep the newest


class QueueClosed(Exception):
    """put() on a closed queue, or get() on a closed and drained one."""


class BoundedQueue(Generic[T]):
    """An asyncio queue that is always bounded and says what it dropped.

    ``notify`` is an optional shared :class:`asyncio.Event` set on every put and
    on close, so one consumer (the batcher) can wait on many queues at once.
    """

    def __init__(
        self, name: str, maxsize: int, policy: DropPolicy, *, notify: asyncio.Event | None = None,
        drop_cause: str = DROP_CAUSE_QUEUE_FULL,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"queue {name!r}: maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self.policy = policy
        self.drop_cause = drop_cause  # what an eviction is called in the drop counts
        self.drops: Counter[str] = Counter()
        self._items: deque[T] = deque()
        self._notify = notify
        self._putters: deque[asyncio.Future[None]] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    async def put(self, item: T) -> None:
        if self.policy is DropPolicy.BLOCK:
            while len(self._items) >= self.maxsize and not self._closed:
                await self._wait(self._putters)
        if self._closed:
            raise QueueClosed(self.name)
        if len(self._items) >= self.maxsize:  # DROP_OLDEST
            self._items.popleft()
            self.drops[self.drop_cause] += 1
        self._items.append(item)
        self._wake(self._getters)
        if self._notify is not None:
            self._notify.set()

    def get_nowait(self) -> T | None:
        """The oldest item, or None when empty."""
        if not self._items:
            return None
        item = self._items.popleft()
        self._wake(self._putters)
        return item

    async def get(self) -> T:
        while not self._items:
            if self._closed:
                raise QueueClosed(self.name)
            await self._wait(self._getters)
        item = self._items.popleft()
        self._wake(self._putters)
        return item

    def close(self) -> None:
        """No more puts; consumers drain what is left, then get QueueClosed."""
        if self._closed:
            return
        self._closed = True
        self._wake(self._putters, everyone=True)
        self._wake(self._getters, everyone=True)
        if self._notify is not None:
            self._notify.set()

    @staticmethod
    async def _wait(waiters: deque[asyncio.Future[None]]) -> None:
        fut = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        try:
            await fut
        finally:
            if fut in waiters:
                waiters.remove(fut)

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]], *, everyone: bool = False) -> None:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                if not everyone:
                    return
