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
from enum import StrEnum

from decision_bridge.publisher import MaskPublisher
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


def publisher_for(address: str, mode: DeliveryMode) -> MaskPublisher:
    """An unbound publisher configured for ``mode``."""
    if mode is DeliveryMode.LATEST:
        return MaskPublisher(address, send_hwm=LATEST_SEND_HWM)
    if mode is DeliveryMode.LOSSLESS:
        return MaskPublisher(address, send_hwm=LOSSLESS_SEND_HWM, nodrop=True,
                             send_buffer_bytes=LOSSLESS_SEND_BUFFER_BYTES)
    return MaskPublisher(address, send_hwm=DEFAULT_SEND_HWM)


async def deliver(publisher: MaskPublisher, mode: DeliveryMode, parts: list[bytes]) -> None:
    """Send one mask message as ``mode`` wants; in lossless mode wait (without blocking the event
    loop) until every subscriber's queue has room."""
    if mode is DeliveryMode.LOSSLESS:
        while not publisher.send(parts, count_drop=False):
            await asyncio.sleep(LOSSLESS_RETRY_S)
        return
    publisher.send(parts)
    if mode is DeliveryMode.LATEST:
        publisher.send([to_single_frame(parts)])
