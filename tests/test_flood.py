"""A hostile peer flooding subscriptions (30k prefixes of 1 KB) neither stalls the event loop nor
grows memory: ZeroMQ hangs up on a subscription longer than any topic, the publisher applies only
prefixes of topics it can send, and reads subscriptions on its own thread (real sockets; the
flooder is another process). The frame-rate ratio is a
benchmark (``python -m benchmarks.flood``), not a timed test."""

from __future__ import annotations

import time

from benchmarks.flood import FLOOD, run_once
from decision_bridge.publisher import MaskPublisher
from decision_bridge.subscriber import MaskSubscriber

MAX_STALL_S = 0.5  # the issue saw 10-14 s; scheduling noise on a loaded 2-core machine stays well under this


async def test_a_subscription_flood_is_refused_without_stalling_the_loop_or_growing_memory():
    await run_once(0)  # warm-up: model, threads and allocator arenas
    quiet = [await run_once(0), await run_once(0)]
    flooded = [await run_once(FLOOD), await run_once(FLOOD)]
    # The smallest of two runs each: a model load's peak varies by tens of MB from run to run.
    grown_mb, flood_grown_mb = min(r[1] for r in quiet), min(r[1] for r in flooded)
    flood_stall_s, flood_refused = max(r[2] for r in flooded), max(r[3] for r in flooded)
    # Subscriptions longer than any topic never reach the publisher: the peer is hung up on by
    # ZeroMQ itself (before, libzmq's subscription trie grew by 1.5 GB for this flood).
    assert flood_refused == 0
    assert flood_grown_mb - grown_mb < 50, (flood_grown_mb, grown_mb)  # peak memory during the run
    assert flood_stall_s < MAX_STALL_S


def test_the_subscription_size_limit_leaves_room_for_a_one_letter_stream():
    publisher = MaskPublisher("tcp://127.0.0.1:0", stream_ids=["a"])
    publisher.bind()
    subscribers = [MaskSubscriber(publisher.bound_address), MaskSubscriber(publisher.bound_address, ["a"])]
    try:
        for subscriber in subscribers:
            subscriber.connect()
        deadline = time.monotonic() + 10
        while publisher.subscriber_count("a") < 2:  # the handshake and subscriptions fit the limit
            assert time.monotonic() < deadline, publisher.subscriptions
            time.sleep(0.01)
    finally:
        for subscriber in subscribers:
            subscriber.close()
        publisher.close()
