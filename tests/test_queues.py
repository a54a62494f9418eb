import asyncio

import pytest

from stream.queues import DROP_CAUSE_QUEUE_FULL, BoundedQueue, DropPolicy, QueueClosed


async def test_drop_oldest_keeps_newest_and_counts():
    q: BoundedQueue[int] = BoundedQueue("live", 3, DropPolicy.DROP_OLDEST)
    for i in range(10):
        await q.put(i)
    assert [q.get_nowait() for _ in range(3)] == [7, 8, 9]
    assert q.drops[DROP_CAUSE_QUEUE_FULL] == 7


async def test_block_policy_is_lossless_backpressure():
    q: BoundedQueue[int] = BoundedQueue("replay", 2, DropPolicy.BLOCK)
    await q.put(0)
    await q.put(1)
    third = asyncio.create_task(q.put(2))
    await asyncio.sleep(0.01)
    assert not third.done(), "put must wait while the queue is full"
    assert q.get_nowait() == 0
    await asyncio.wait_for(third, 1)
    assert [await q.get(), await q.get()] == [1, 2]
    assert not q.drops


async def test_close_wakes_waiters_and_drains():
    q: BoundedQueue[int] = BoundedQueue("q", 1, DropPolicy.BLOCK)
    await q.put(1)
    blocked_put = asyncio.create_task(q.put(2))
    await asyncio.sleep(0)
    q.close()
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(blocked_put, 1)
    assert await q.get() == 1  # what was queued before close is still delivered
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(q.get(), 1)


async def test_notify_event_set_on_put_and_close():
    event = asyncio.Event()
    q: BoundedQueue[int] = BoundedQueue("q", 1, DropPolicy.BLOCK, notify=event)
    await q.put(1)
    assert event.is_set()
    event.clear()
    q.close()
    assert event.is_set()


def test_maxsize_must_be_positive():
    with pytest.raises(ValueError, match="maxsize"):
        BoundedQueue("bad", 0, DropPolicy.BLOCK)
