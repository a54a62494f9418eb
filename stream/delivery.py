"""How masks reach subscribers: ``--zmq-mode pub | latest | lossless``.

* ``pub`` (default): every mask to every subscriber; a subscriber that falls behind queues up
  to the publisher's high-water mark (1000 messages) and then loses messages, alone.
* ``latest``: for control loops. The publisher queues at most ``LATEST_SEND_HWM`` messages per
  subscriber, so a slow one loses old masks instead of receiving them minutes late, and every
  mask also goes out in the single-frame form (``latest/<stream>``) for ``ZMQ_CONFLATE``.
* ``lossless``: for evaluation. Every mask is delivered, in order, to every subscriber: when a
  subscriber's queue is full the pipeline waits for it (back-pressure through the result queue
  to the sources; a live camera then drops at its own queue, counted). Start the subscribers
  first and use ``--zmq-wait`` (with no subscriber at all, ZeroMQ has no one to wait for).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from enum import StrEnum

from decision_bridge.curve import CurveServer
from decision_bridge.io_thread import PublisherThread
from decision_bridge.publisher import SUBSCRIBER_POLL_S, MaskPublisher
from decision_bridge.schema import to_single_frame


class DeliveryMode(StrEnum):
    PUB = "pub"
    LATEST = "latest"
    LOSSLESS = "lossless"


DEFAULT_SEND_HWM = 1000
LATEST_SEND_HWM = 2  # a control loop wants the newest mask: two in flight, older ones go
LOSSLESS_SEND_HWM = 4  # small: the subscriber's pace, not a deep buffer, sets the pipeline's
LOSSLESS_SEND_BUFFER_BYTES = 256 * 1024  # and a small kernel buffer: megabytes of masks are not hidden in it
LOSSLESS_RETRY_S = 0.002  # how often a full queue is retried while the pipeline waits


def publisher_for(address: str, mode: DeliveryMode, stream_ids: Iterable[str] | None = None, *,
                  curve: CurveServer | None = None) -> MaskPublisher:
    """An unbound publisher configured for ``mode``, serving subscriptions to ``stream_ids`` only
    (any stream when None), CURVE-encrypted when ``curve`` is given."""
    if mode is DeliveryMode.LATEST:
        return MaskPublisher(address, send_hwm=LATEST_SEND_HWM, stream_ids=stream_ids, curve=curve)
    if mode is DeliveryMode.LOSSLESS:
        return MaskPublisher(address, send_hwm=LOSSLESS_SEND_HWM, nodrop=True, curve=curve, heartbeat=False,
                             send_buffer_bytes=LOSSLESS_SEND_BUFFER_BYTES, stream_ids=stream_ids)
    return MaskPublisher(address, send_hwm=DEFAULT_SEND_HWM, stream_ids=stream_ids, curve=curve)


async def deliver(io: PublisherThread, mode: DeliveryMode, parts: list[bytes], *, single_frame: bool = True) -> None:
    """Send one mask message as ``mode`` wants, through the publisher's own thread; in lossless
    mode wait (awaiting, never blocking the event loop) until every subscriber's queue has room."""
    if mode is DeliveryMode.LOSSLESS:
        while not await asyncio.wrap_future(io.send(parts, lossless=True)):
            await asyncio.sleep(LOSSLESS_RETRY_S)  # the thread's queue was full, or it is closing
        return
    io.send(parts)
    if mode is DeliveryMode.LATEST and single_frame:  # masks only: the CONFLATE form
        io.send([to_single_frame(parts)], count_drop=False)


async def wait_for_subscribers(io: PublisherThread, timeout_s: float, count: int) -> bool:
    """Whether ``count`` mask subscribers joined within ``timeout_s`` (asked on the publisher's thread)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while await asyncio.wrap_future(io.call(io.publisher.subscriber_count)) < count:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(SUBSCRIBER_POLL_S)
    return True
