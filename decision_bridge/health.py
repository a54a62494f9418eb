"""Per-stream health as a subscriber sees it (openpilot style: alive, on rate, fresh, valid).

Fed every decoded mask header and ``roadseg.stream`` report; asked with the time passed in, so
the thresholds are testable without sleeping. Thresholds derive from what the publisher
announces in its status messages, not from constants: a 0.5 frames/s stream is not dead between
frames (its status messages keep it alive), and a publisher frozen by SIGSTOP goes quiet on
every topic at once, so it is dead after ``ALIVE_STATUS_PERIODS`` status periods (0.6 s).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from decision_bridge.liveness import StreamEvent, StreamReport
from decision_bridge.schema import MaskHeader

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
# Rate is measured over this many most recent mask arrivals: ~1 s at 30 Hz.
RATE_WINDOW_MESSAGES = 30
ALIVE_STATUS_PERIODS = 3  # alive: any message within this many announced status periods
FRESH_MASK_PERIODS = 3  # fresh: a mask within this many announced mask periods
# Delivery counts as on rate while this subscriber receives at least this share of the masks the
# publisher says it publishes (below it, this subscriber is losing messages: it is too slow).
MIN_RATE_SHARE = 0.5
LIVE_STATE = "live"


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """Health of one stream as seen by this subscriber, at the time of the call."""

    alive: bool  # a message of this stream (mask or status) arrived recently enough
    rate_hz: float  # masks received per second over the last RATE_WINDOW_MESSAGES (0.0 with fewer than 2)
    valid: bool  # alive, fresh, on rate, publisher state live, last mask valid, not ended
    last_seq: int  # -1 if nothing received yet
    gaps: int  # seq jumps seen (each jump = one or more frames this subscriber never saw)
    age_ms: float  # since the last mask arrived here (inf if none)
    missed: int = 0  # frames never seen: the sum of all jump sizes (and, after eos, those up to final_seq)
    dropped_upstream: int = 0  # of those, declared dropped by the publisher (dropped_before)
    fresh: bool = False  # the last mask arrived within FRESH_MASK_PERIODS of the announced mask rate
    on_rate: bool = False  # receiving at least MIN_RATE_SHARE of what the publisher publishes (and min_rate_hz)
    state: str = ""  # the publisher's stream state from its last status ("" before any)
    ended: bool = False  # end of stream received: final_seq is the last seq there will be
    final_seq: int | None = None
    run_id: str = ""


@dataclass(slots=True)
class StreamHealth:
    """What a subscriber remembers about one stream."""

    last_seq: int = -1
    last_mask_ns: int | None = None
    last_heard_ns: int | None = None  # any message of this stream
    last_valid: bool = False
    gaps: int = 0
    missed: int = 0
    dropped_upstream: int = 0
    run_id: str = ""
    report: StreamReport | None = None  # the newest status or eos
    saw_no_frame: bool = False  # a status of this run said last_seq -1 before its first mask came
    arrivals: deque[int] = field(default_factory=lambda: deque(maxlen=RATE_WINDOW_MESSAGES))

    def on_mask(self, header: MaskHeader, now_ns: int) -> None:
        if header.run_id != self.run_id or (self.last_seq >= 0 and header.seq <= self.last_seq):
            if self.last_seq >= 0:  # a new run (or an old publisher's seq going back): not a loss
                log.info("stream %s restarted (run %s seq %d after run %s seq %d)", header.stream_id,
                         header.run_id or "?", header.seq, self.run_id or "?", self.last_seq)
            self._restart(header.run_id)
        if self.last_seq >= 0 or self._from_start(header):
            jump = header.seq - self.last_seq - 1
            if jump > 0:
                self.gaps += 1
                self.missed += jump
                self.dropped_upstream += min(header.dropped_before, jump)
        self.last_seq = header.seq
        self.last_mask_ns = self.last_heard_ns = now_ns
        self.last_valid = header.valid
        self.arrivals.append(now_ns)

    def _from_start(self, header: MaskHeader) -> bool:
        """Whether the first mask of a run is known to follow frame -1 (SCHEMA.md section 6): nothing
        was published before it (``dropped_before == seq``), or a status of this run said no frame
        had been captured yet when we were already listening."""
        started = self.report is not None and self.report.run_id == header.run_id and self.saw_no_frame
        return header.dropped_before == header.seq or started

    def on_report(self, report: StreamReport, now_ns: int) -> None:
        if report.run_id != self.run_id and self.last_seq >= 0:
            self._restart(report.run_id)
        self.run_id = report.run_id
        self.report = report
        self.last_heard_ns = now_ns
        if self.last_seq < 0 and report.kind is StreamEvent.STATUS:
            self.saw_no_frame = self.saw_no_frame or report.last_seq == -1
        if report.kind is StreamEvent.EOS and report.final_seq > self.last_seq:
            # Frames after the last mask we saw (all of them, if we saw none) never came: lost, a gap.
            self.missed += report.final_seq - self.last_seq
            self.gaps += 1

    def _restart(self, run_id: str) -> None:
        self.last_seq = -1
        self.saw_no_frame = False
        self.run_id = run_id
        self.report = None
        self.arrivals.clear()

    def rate_hz(self) -> float:
        if len(self.arrivals) < 2:
            return 0.0
        span_ns = self.arrivals[-1] - self.arrivals[0]
        return (len(self.arrivals) - 1) * NS_PER_S / span_ns if span_ns > 0 else 0.0

    def status(self, now_ns: int, *, alive_timeout_ns: int, min_rate_hz: float | None) -> StreamStatus:
        report = self.report
        if report is not None:
            alive_timeout_ns = int(ALIVE_STATUS_PERIODS * report.period_ms * 1e6)
        alive = self.last_heard_ns is not None and now_ns - self.last_heard_ns <= alive_timeout_ns
        mask_age_ns = None if self.last_mask_ns is None else now_ns - self.last_mask_ns
        fresh = mask_age_ns is not None and mask_age_ns <= self._fresh_limit_ns(alive_timeout_ns)
        rate = self.rate_hz()
        on_rate = (min_rate_hz is None or rate >= min_rate_hz) and self._keeping_up(rate)
        ended = report is not None and report.kind is StreamEvent.EOS
        state_ok = report is None or report.state == LIVE_STATE
        return StreamStatus(
            alive=alive,
            rate_hz=rate,
            valid=alive and fresh and on_rate and state_ok and self.last_valid and not ended,
            last_seq=self.last_seq,
            gaps=self.gaps,
            age_ms=float("inf") if mask_age_ns is None else mask_age_ns / 1e6,
            missed=self.missed,
            dropped_upstream=self.dropped_upstream,
            fresh=fresh,
            on_rate=on_rate,
            state="" if report is None else report.state,
            ended=ended,
            final_seq=report.final_seq if ended and report is not None else None,
            run_id=self.run_id,
        )

    def _fresh_limit_ns(self, alive_timeout_ns: int) -> float:
        """A mask is fresh within FRESH_MASK_PERIODS of the publisher's announced mask rate (or frame
        rate, before it has one); before any announcement (an older publisher), within the alive timeout."""
        # Before two masks give a mask rate, the source's frame rate stands in for it.
        rate = (self.report.mask_fps or self.report.fps) if self.report is not None else None
        if not rate:
            return alive_timeout_ns
        return max(alive_timeout_ns, FRESH_MASK_PERIODS * NS_PER_S / rate)

    def _keeping_up(self, rate: float) -> bool:
        announced = self.report.mask_fps if self.report is not None else None
        if not announced or len(self.arrivals) < RATE_WINDOW_MESSAGES // 2:
            return True  # too little to judge: do not flag a stream that just started
        return rate >= MIN_RATE_SHARE * announced
