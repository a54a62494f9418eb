import asyncio

import numpy as np
import pytest

from stream.batcher import AllStreamsEnded, BatchConfig, Batcher
from stream.clock import MONOTONIC, ManualClock
from stream.frame import Frame
from stream.queues import BoundedQueue, DropPolicy

IMAGE = np.zeros((4, 4, 3), np.uint8)


def frame(source: str, seq: int) -> Frame:
    return Frame(source, seq, seq, seq, IMAGE)


def make(n: int, config: BatchConfig, clock=None):
    notify = asyncio.Event()
    queues: list[BoundedQueue[Frame]] = [
        BoundedQueue(f"s{i}", 16, DropPolicy.BLOCK, notify=notify) for i in range(n)
    ]
    return queues, Batcher(queues, notify, config, clock or ManualClock())


async def test_batch_closes_when_every_open_stream_is_in_without_waiting():
    queues, batcher = make(2, BatchConfig(max_batch=8, max_wait_ms=10_000))
    await queues[0].put(frame("s0", 0))
    await queues[1].put(frame("s1", 0))
    batch = await asyncio.wait_for(batcher.next_batch(), 1)
    assert sorted(f.source_id for f in batch) == ["s0", "s1"]


async def test_slow_stream_does_not_hold_the_batch_past_max_wait():
    queues, batcher = make(2, BatchConfig(max_batch=8, max_wait_ms=20), clock=MONOTONIC)
    await queues[0].put(frame("s0", 0))  # s1 never delivers
    batch = await asyncio.wait_for(batcher.next_batch(), 1)
    assert [f.source_id for f in batch] == ["s0"]


async def test_round_robin_and_max_batch():
    queues, batcher = make(2, BatchConfig(max_batch=4, max_wait_ms=0))
    for i in range(6):
        await queues[0].put(frame("s0", i))
    await queues[1].put(frame("s1", 0))
    batch = await batcher.next_batch()
    assert len(batch) == 4
    assert "s1" in {f.source_id for f in batch}, "the second stream must not be starved"
    seqs = [f.seq for f in batch if f.source_id == "s0"]
    assert seqs == sorted(seqs), "frames of one stream stay in order"


async def test_all_streams_ended_after_drain():
    queues, batcher = make(1, BatchConfig(max_batch=2, max_wait_ms=0))
    await queues[0].put(frame("s0", 0))
    queues[0].close()
    assert len(await batcher.next_batch()) == 1
    with pytest.raises(AllStreamsEnded):
        await batcher.next_batch()


async def test_waits_for_first_frame():
    queues, batcher = make(1, BatchConfig(max_batch=2, max_wait_ms=0))
    task = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0.01)
    assert not task.done()
    await queues[0].put(frame("s0", 5))
    assert [f.seq for f in await asyncio.wait_for(task, 1)] == [5]


def test_config_validation():
    with pytest.raises(ValueError, match="max_batch"):
        BatchConfig(max_batch=0)
