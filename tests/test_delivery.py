"""Delivery modes with a real pipeline and real sockets: lossless waits for a slow subscriber
and delivers every frame in order; latest keeps a control loop's newest mask fresh while a slow
subscriber loses old masks instead of delaying anyone."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import zmq

from decision_bridge.schema import decode_single_frame, latest_topic
from decision_bridge.subscriber import MaskSubscriber
from models.backends.common import Precision
from stream.config import PipelineConfig
from stream.delivery import DeliveryMode
from tests.pipeline_helpers import LOOPBACK_ANY, running, wait_for

SLOW_SUBSCRIBER_S = 0.1


def _frames(folder, count: int, size: tuple[int, int]):
    rng = np.random.default_rng(1)
    width, height = size
    for i in range(count):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), rng.integers(0, 255, (height, width, 3), np.uint8))
    return folder


async def test_lossless_delivers_every_frame_in_order_and_the_pipeline_waits_for_the_subscriber(tmp_path):
    # Large raw masks, so ZeroMQ's and the kernel's buffers fill after a few messages and the
    # publisher must wait for the subscriber rather than buffer the whole run.
    folder = _frames(tmp_path, 40, (1024, 512))
    config = PipelineConfig(sources=(f"cam={folder}",), model="demo", precision=Precision.FP32,
                            zmq_address=LOOPBACK_ANY, zmq_wait_subscriber_s=30.0, viewer=None, stats_interval_s=0,
                            zmq_mode=DeliveryMode.LOSSLESS, mask_encoding="u8-raw")
    async with running(config) as (pipeline, task):
        await wait_for(lambda: pipeline.zmq_address is not None, what="publisher bind")
        # A lossless consumer that pauses on purpose: no heartbeat to hang up on it meanwhile.
        sub = MaskSubscriber(pipeline.zmq_address, ["cam"], rcv_hwm=2, heartbeat=False)
        sub.connect()
        seqs: list[int] = []
        try:
            # A subscriber that does not read at all yet: the pipeline fills the queues, then waits.
            await wait_for(lambda: pipeline.publisher is not None and pipeline.publisher.refused > 0,
                           timeout_s=120, what="the publisher to find the queue full")
            for _ in range(40):  # kernel buffers still take a little; then it must stand still
                published = pipeline.telemetry.frames
                await asyncio.sleep(0.5)
                if pipeline.telemetry.frames == published:
                    break
            assert pipeline.telemetry.frames == published < 40, "the pipeline went on without the subscriber"
            while not sub.status("cam").ended:
                assert not task.done() or task.exception() is None
                message = sub.recv(0)  # one at a time, slowly
                if message is not None:
                    seqs.append(message.header.seq)
                await asyncio.sleep(0.01)
        finally:
            sub.close()
        summary = await task
    assert seqs == list(range(40))
    assert pipeline.publisher is not None and pipeline.publisher.dropped_hwm == 0
    assert summary["frames"] == 40 and summary["dropped_total"] == 0


async def test_latest_keeps_the_newest_mask_fresh_and_a_slow_subscriber_delays_nothing(tmp_path):
    folder = _frames(tmp_path, 30, (256, 128))
    rate = 10.0
    config = PipelineConfig(sources=(f"cam={folder}",), model="demo", precision=Precision.FP32,
                            zmq_address=LOOPBACK_ANY, zmq_wait_subscriber_s=30.0, zmq_subscribers=2, viewer=None,
                            stats_interval_s=0, realtime=True, replay_rate=rate, zmq_mode=DeliveryMode.LATEST)
    context = zmq.Context()
    async with running(config) as (pipeline, task):
        await wait_for(lambda: pipeline.zmq_address is not None, what="publisher bind")
        control = context.socket(zmq.SUB)  # what a C++ control loop would do: CONFLATE on the single frame
        control.setsockopt(zmq.LINGER, 0)
        control.setsockopt(zmq.CONFLATE, 1)
        control.setsockopt(zmq.SUBSCRIBE, latest_topic("cam"))
        control.connect(pipeline.zmq_address)
        slow = MaskSubscriber(pipeline.zmq_address, ["cam"], rcv_hwm=2)
        slow.connect()
        published: list[int] = []  # publish times, as the pipeline sent them
        pipeline.observers.append(lambda frame, header, sent_ns: published.append(header.publish_mono_ns))
        behind: list[int] = []  # per read: how many newer masks had been published than the one held
        slow_seqs: list[int] = []
        try:
            while not task.done():
                await asyncio.sleep(SLOW_SUBSCRIBER_S * 4)  # the slow one reads one mask per 200 ms
                message = slow.recv(0)
                if message is not None:
                    slow_seqs.append(message.header.seq)
                if control.poll(0):
                    held = decode_single_frame(control.recv()).header.publish_mono_ns
                    behind.append(sum(1 for t in published if t > held))
            summary = task.result()
        finally:
            slow.close()
            control.close()
            context.term()
    # The control loop always holds the newest mask, or the one before while the newest is on the wire:
    # never older than two frame periods of the stream, however slow the other subscriber.
    assert behind and max(behind) <= 1, behind
    assert sorted(slow_seqs) == slow_seqs  # whatever the slow one got, in order
    stream = summary["streams"]["cam"]
    assert stream["frames_in"] == 30 and sum(stream["dropped"].values()) == 0, stream  # nobody waited on it
