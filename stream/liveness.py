"""Status and end-of-stream messages for every stream, so a planner can tell slow from dead.

:class:`StatusBeacon` turns the pipeline's per-stream status (:meth:`Pipeline.stream_status`)
into ``roadseg.stream`` messages (:mod:`decision_bridge.liveness`): one ``status`` per stream
every period whether or not frames flow, and one ``eos`` when a stream is over, sent only once
its last frame has been published or dropped so ``final_seq`` follows the last mask on the wire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from decision_bridge.io_thread import PublisherThread
from decision_bridge.liveness import DEFAULT_STATUS_PERIOD_MS, StreamEvent, StreamReport, encode_report
from stream.clock import Clock
from stream.health import StreamState

log = logging.getLogger(__name__)

FINAL_STATES = (StreamState.ENDED.value, StreamState.FAILED.value)
EOS_WAIT_S = 5.0  # at shutdown, how long an end of stream may wait for a lossless subscriber's queue
EOS_RETRY_S = 0.005
Status = Mapping[str, Mapping[str, Any]]  # stream id -> Pipeline.stream_status() entry


class StatusBeacon:
    """Sends status messages at a fixed period and each stream's end of stream exactly once."""

    def __init__(self, publisher: PublisherThread, run_id: str, status: Callable[[], Status], clock: Clock, *,
                 period_ms: float = DEFAULT_STATUS_PERIOD_MS, max_age_ms: float | None = None) -> None:
        self._publisher = publisher
        self._run_id = run_id
        self._status = status
        self._clock = clock
        self.period_ms = period_ms
        self._max_age_ms = max_age_ms
        self.ended: set[str] = set()  # streams whose eos went out
        self.sent = 0

    async def run(self) -> None:
        """Until cancelled: every period, a status per stream, and eos for streams that are over."""
        while True:
            self.tick()
            await asyncio.sleep(self.period_ms / 1e3)

    def tick(self) -> None:
        for stream_id, entry in self._status().items():
            if stream_id in self.ended:
                continue
            if entry["state"] in FINAL_STATES and entry["in_flight"] == 0:
                self._send(StreamEvent.EOS, stream_id, entry, reason=str(entry["state"]))
            else:
                self._send(StreamEvent.STATUS, stream_id, entry)

    async def finish(self, wait_s: float = EOS_WAIT_S) -> None:
        """At shutdown, after the last mask: eos for every stream that has not had one. A lossless
        publisher may refuse while a slow subscriber catches up: retried for up to ``wait_s``."""
        deadline = self._clock.now_ns() + int(wait_s * 1e9)
        for stream_id, entry in self._status().items():
            reason = str(entry["state"]) if entry["state"] in FINAL_STATES else "stopped"
            while stream_id not in self.ended:
                sent = self._send(StreamEvent.EOS, stream_id, entry, reason=reason)
                if stream_id in self.ended:  # queued: wait until ZeroMQ accepts it, within the deadline
                    remaining_s = max(0.0, (deadline - self._clock.now_ns()) / 1e9)
                    try:
                        await asyncio.wait_for(asyncio.wrap_future(sent), remaining_s)
                    except TimeoutError:
                        log.warning("stream %s: end of stream not delivered (a subscriber is not reading)",
                                    stream_id)
                    break
                if self._clock.now_ns() > deadline:
                    log.warning("stream %s: end of stream not delivered (a subscriber is not reading)", stream_id)
                    break
                await asyncio.sleep(EOS_RETRY_S)

    def _send(self, kind: StreamEvent, stream_id: str, entry: Mapping[str, Any],
              reason: str | None = None) -> Future[bool]:
        live = bool(entry["live"])
        report = StreamReport(
            kind=kind,
            stream_id=stream_id,
            run_id=self._run_id,
            state=str(entry["state"]),
            last_seq=int(entry["frames_in"]) - 1,
            published=int(entry["published"]),
            dropped=sum(int(n) for n in entry["dropped"].values()),
            fps=entry.get("fps"),
            mask_fps=entry.get("mask_fps"),
            live=live,
            max_age_ms=self._max_age_ms if live else None,
            period_ms=self.period_ms,
            reconnects=int(entry["reconnects"]),
            publish_mono_ns=self._clock.now_ns(),
            publish_wall_ns=self._clock.wall_ns(),
            reason=reason,
        )
        # Not a mask: a refused status is simply sent again next period, and counts as no loss. An end
        # of stream goes out like a lossless mask (retried until a full subscriber queue has room),
        # after the stream's last mask: the publisher's thread keeps their order.
        eos = kind is StreamEvent.EOS
        sent = self._publisher.send(encode_report(report), lossless=eos, count_drop=False)
        self.sent += 1
        refused_at_once = sent.done() and sent.result() is False  # the thread's queue was full: try again
        if eos and not refused_at_once:
            self.ended.add(stream_id)
            log.info("stream %s: end of stream (%s), final seq %d", stream_id, reason, report.last_seq)
        return sent
